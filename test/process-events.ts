type CapturedEvent = 'unhandledRejection' | 'uncaughtException'

/**
 * Records a process-wide event (an unhandled rejection, an uncaught exception) instead of letting tap fail the file
 * on the first one, so a test can count them and assert on them. In server.ts, close-with-grace turns either into a
 * shutdown (exit 1): each one would take the whole API process down. Call restore() in a finally or teardown.
 */
export function captureProcessEvent (event: CapturedEvent) {
  // Typed through the plain EventEmitter signature: process's overloads take one event name at a time.
  const emitter: NodeJS.EventEmitter = process
  const saved = emitter.listeners(event) as Array<(...args: unknown[]) => void>
  emitter.removeAllListeners(event)
  const reasons: unknown[] = []
  const record = (reason: unknown) => { reasons.push(reason) }
  emitter.on(event, record)
  return {
    reasons,
    restore () {
      emitter.removeListener(event, record)
      for (const listener of saved) emitter.on(event, listener)
    }
  }
}
