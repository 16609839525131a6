// Prometheus's own binaries for the observability tests (promtool for the rule files, prometheus for the live
// test): Debian's `prometheus` package, installed with apt-get when missing on Debian as root, as scripts/stack/
// installs PostgreSQL, PgBouncer and Redis. Anywhere else a missing binary is an error naming the install line.
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { delimiter, join } from 'node:path'

export const PROMETHEUS_INSTALL_LINE = 'sudo apt-get install -y prometheus'

export interface PrometheusBinaries {
  prometheus: string
  promtool: string
}

function find (name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter((dir) => dir.startsWith('/')), '/usr/bin']
  return dirs.map((dir) => join(dir, name)).find((file) => existsSync(file))
}

function locate (): PrometheusBinaries | undefined {
  const prometheus = find('prometheus')
  const promtool = find('promtool')
  return prometheus !== undefined && promtool !== undefined ? { prometheus, promtool } : undefined
}

let located: PrometheusBinaries | undefined

/** The paths of `prometheus` and `promtool`, installing Debian's package first when they are missing and we may. */
export function prometheusBinaries (): PrometheusBinaries {
  located ??= locate()
  if (located !== undefined) return located
  const canInstall = process.getuid?.() === 0 && existsSync('/etc/debian_version') && find('apt-get') !== undefined
  if (!canInstall) throw new Error(`prometheus and promtool are missing. Install them with:\n    ${PROMETHEUS_INSTALL_LINE}`)
  const apt = (args: string[]) => execFileSync('apt-get', ['-o', 'DPkg::Lock::Timeout=300', ...args], {
    stdio: ['ignore', 'ignore', 'inherit'],
    timeout: 600_000,
    // The package's service is not wanted: the tests start their own Prometheus on a loopback port.
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  })
  console.error('prometheus is missing; installing it with apt-get')
  apt(['update'])
  // --no-upgrade: nothing already installed is upgraded (and restarted) on the side.
  apt(['install', '-y', '--no-upgrade', '--no-install-recommends', 'prometheus'])
  located = locate()
  if (located === undefined) throw new Error('prometheus and promtool are still missing after apt-get install prometheus')
  return located
}
