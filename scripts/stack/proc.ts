// Process helpers for the stack; progress goes to stderr so that stdout stays machine-readable.
import { spawnSync } from 'node:child_process'
import { accessSync, constants, existsSync, readFileSync } from 'node:fs'
import { connect } from 'node:net'
import { userInfo } from 'node:os'
import { delimiter, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

export const log = (message: string) => { process.stderr.write(`stack: ${message}\n`) }
/** Ends the command with an error, after the last 30 lines of `logFile` (a failed tool's output) when there is one. */
export function die (message: string, logFile?: string): never {
  if (logFile !== undefined && existsSync(logFile)) process.stderr.write(`stack: last lines of ${logFile}:\n${readFileSync(logFile, 'utf8').split('\n').slice(-31).join('\n')}`)
  process.stderr.write(`stack: error: ${message}\n`)
  process.exit(1)
}

export const IS_ROOT = process.getuid?.() === 0
// PostgreSQL and PgBouncer refuse to run as root; Redis follows along so that the stack folder has one owner.
export const SVC_USER = IS_ROOT ? 'postgres' : userInfo().username

export interface Run { ok: boolean, out: string, err: string }
interface RunOptions { cwd?: string, env?: NodeJS.ProcessEnv, progress?: boolean }
export function run (cmd: string, args: string[], { progress = false, ...options }: RunOptions = {}): Run {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...options, stdio: ['ignore', progress ? 2 : 'pipe', progress ? 2 : 'pipe'] })
  return { ok: r.status === 0, out: r.stdout ?? '', err: r.stderr ?? '' }
}
/** Runs as the service user (as root: runuser, from a folder that user can read, which PostgreSQL's tools want). */
export const runAs = (cwd: string, cmd: string, args: string[], options: RunOptions = {}): Run =>
  IS_ROOT ? run('runuser', ['-u', SVC_USER, '--', cmd, ...args], { cwd, ...options }) : run(cmd, args, options)

/** True when the service user (or `nobody` before it exists) may enter `dir`. */
export function userCanEnter (dir: string): boolean {
  const user = run('id', ['-u', SVC_USER]).ok ? SVC_USER : 'nobody'
  return run('runuser', ['-u', user, '--', 'test', '-x', dir]).ok
}

export const executable = (file: string) => { try { accessSync(file, constants.X_OK); return file } catch { return undefined } }
export const which = (name: string) =>
  (process.env.PATH ?? '').split(delimiter).filter((d) => d.startsWith('/')).map((d) => executable(join(d, name))).find(Boolean)

/** The command name of a live process; zombies count as dead (they neither hold a port nor can be stopped). */
export function procComm (pid: number): string | undefined {
  if (existsSync('/proc/self/stat')) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      return stat.slice(stat.lastIndexOf(') ') + 2).startsWith('Z') ? undefined : readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
    } catch { return undefined }
  }
  const [state, comm] = run('ps', ['-o', 'stat=', '-o', 'comm=', '-p', String(pid)]).out.trim().split(/\s+/)
  return state === undefined || state === '' || state.startsWith('Z') ? undefined : comm
}

export function readPid (file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').split('\n')[0])
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch { return undefined }
}
export const signal = (pid: number, sig: NodeJS.Signals) => { try { process.kill(pid, sig) } catch {} }

export const portInUse = (port: number) => new Promise<boolean>((resolve) => {
  const socket = connect(port, '127.0.0.1')
  socket.once('connect', () => { socket.destroy(); resolve(true) })
  socket.once('error', () => resolve(false))
})
/** `ss` output for a listening port: pids (only other users' processes when root) and the users:(...) part. */
export function listener (port: number): { pids: number[], who: string } | undefined {
  if (which('ss') === undefined) return undefined
  const out = run('ss', ['-Hltnp', `sport = :${port}`]).out
  return { pids: [...out.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1])), who: /users:\(.*\)/.exec(out)?.[0] ?? '' }
}

/** Polls `check` every 100 ms for up to `seconds`; `gone` ends the wait early (a daemon that died on startup). */
export async function waitFor (seconds: number, check: () => boolean | Promise<boolean>, gone?: (tick: number) => boolean): Promise<boolean> {
  for (let i = 0; i < seconds * 10; i++) {
    if (await check()) return true
    if (gone?.(i) === true) return false
    await sleep(100)
  }
  return false
}
