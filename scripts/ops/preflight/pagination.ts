// 4 pagination: every list (a GET whose 200 body has nextCursor) with limit=1: nextCursor present, following it is
// 200 with a different item, and a tampered cursor is 400. A list with fewer than 2 items gets 2 made for it, unless
// --read-only: posts on the user's own feed, users signed up for the run that it follows or that follow it, 1-cent
// deposits from the --client service client (without it the transactions list is a SKIP).
import { buildRequest, type Check, type Status } from './context.ts'
import { isObject, PATIENCE_MS, said, send } from './http.ts'

const idOf = (item: unknown) => isObject(item) ? item.id : undefined

/**
 * The cursor with one character changed. Not the last one: in base64 the last character of a block that does not
 * fill it carries padding bits that decoders ignore, so changing it can leave the decoded bytes as they were.
 */
export function tamper (cursor: string): string {
  const at = cursor.indexOf('.') + 1
  return cursor.slice(0, at) + (cursor[at] === 'A' ? 'B' : 'A') + cursor.slice(at + 1)
}

export const pagination: Check = {
  id: 4,
  name: 'pagination',
  async run (ctx) {
    const { ops, schemas } = ctx
    const allLists = ops.filter((op) => op.method === 'GET' && schemas.concrete(schemas.success(op)).properties?.nextCursor !== undefined)
    // A list under a path parameter (an endpoint's deliveries) belongs to one resource the preflight has no way to
    // make for sure (a webhook endpoint needs a public https receiver); it is named, not paged.
    const lists = allLists.filter((op) => !op.path.includes('{'))
    const nested = allLists.filter((op) => op.path.includes('{')).map((op) => `not paged (a list of one resource's items): ${op.key}`)
    const failures: string[] = []
    const skipped: string[] = []
    const passed: string[] = []
    const created: string[] = []
    for (const op of lists) {
      const hasLimit = (op.parameters ?? []).some((p) => p.in === 'query' && p.name === 'limit')
      const page = (cursor?: string) => {
        const spec = buildRequest(ctx, op)
        const url = new URL(spec.url, 'http://x')
        if (hasLimit) url.searchParams.set('limit', '1')
        if (cursor !== undefined) url.searchParams.set('cursor', cursor)
        return send(ctx.base, { ...spec, url: `${url.pathname}${url.search}` }, PATIENCE_MS)
      }
      let first = await page()
      const firstBody = () => isObject(first.body) ? first.body : {}
      if (first.status !== 200) { failures.push(`${op.key}?limit=1 -> ${said(first)} (expected 200)`); continue }
      if (!Object.hasOwn(firstBody(), 'nextCursor')) { failures.push(`${op.key}: 200 body has no nextCursor field`); continue }

      if (firstBody().nextCursor === null) {
        // Too few rows for a second page: create two with the operation whose answer is this list's item.
        const itemRef = schemas.concrete(schemas.concrete(schemas.success(op)).properties?.data).items?.$ref
        const creator = ops.find((o) => o.method === 'POST' && itemRef !== undefined && schemas.jsonBody(o.responses?.['201'] ?? o.responses?.['200'])?.$ref === itemRef)
        // Lists whose items no single operation answers with (follows: a PUT with 204) name their own filler.
        const filler = ctx.creators[op.operationId ?? '']
        if (!hasLimit) { skipped.push(`${op.key}: shorter than one page and has no limit parameter`); continue }
        if (ctx.readOnly || (creator === undefined && filler === undefined)) {
          skipped.push(`${op.key}: fewer than 2 items and ${ctx.readOnly ? '--read-only' : 'no operation in the document creates its items'}`)
          continue
        }
        const creatorKey = creator?.key ?? `the filler of ${op.key}`
        const create = filler ?? ctx.creators[creator?.operationId ?? ''] ??
          (async () => { const answer = await send(ctx.base, buildRequest(ctx, creator!), PATIENCE_MS); return { status: answer.status, said: said(answer) } })
        if (typeof create === 'string') { skipped.push(`${op.key}: fewer than 2 items and ${create}`); continue }
        let made = 0
        let forbidden = false
        for (let i = 0; i < 2 && !forbidden; i++) {
          const answer = await create()
          if (answer.status >= 200 && answer.status < 300) made++
          else if (answer.status === 403) forbidden = true
          else failures.push(`${op.key}: creating an item with ${creatorKey} -> ${answer.said}`)
        }
        if (forbidden) {
          skipped.push(`${op.key}: fewer than 2 items and ${creatorKey} is not the user's to call (403); --client id:secret lets a service client fill it`)
          continue
        }
        created.push(`${made} via ${creatorKey}`)
        first = await page()
        if (first.status !== 200 || !isObject(first.body) || typeof first.body.nextCursor !== 'string') {
          failures.push(`${op.key}?limit=1 -> ${said(first)} with nextCursor ${JSON.stringify(firstBody().nextCursor)} after creating ${made} items (expected a cursor)`)
          continue
        }
      }
      const cursor = firstBody().nextCursor
      if (typeof cursor !== 'string') { failures.push(`${op.key}: nextCursor is ${JSON.stringify(cursor)}, not a string or null`); continue }

      const second = await page(cursor)
      const secondData = isObject(second.body) ? second.body.data : undefined
      const firstItem = Array.isArray(firstBody().data) ? (firstBody().data as unknown[])[0] : undefined
      if (second.status !== 200) failures.push(`${op.key}: following nextCursor -> ${said(second)} (expected 200)`)
      else if (!Array.isArray(secondData) || secondData.length === 0) failures.push(`${op.key}: following nextCursor gave an empty page`)
      else if (idOf(firstItem) !== undefined && idOf(secondData[0]) === idOf(firstItem)) failures.push(`${op.key}: the next page repeats item ${String(idOf(firstItem))}`)
      else {
        const tampered = await page(tamper(cursor))
        if (tampered.status !== 400) failures.push(`${op.key}: a tampered cursor -> ${said(tampered)} (expected 400)`)
        else passed.push(op.key)
      }
    }
    const status: Status = failures.length > 0 ? 'FAIL' : lists.length === 0 || skipped.length > 0 ? 'SKIP' : 'PASS'
    const evidence = lists.length === 0
      ? 'no list operations in the document (GET with nextCursor in its 200 body)'
      : `${passed.length} of ${lists.length} lists paginate (${passed.join(', ') || 'none'}): nextCursor present, next page 200 with a new item, tampered cursor 400` +
        `; ${created.length > 0 ? `created ${created.join(', ')}` : 'created nothing'}`
    return { status, evidence, details: [...failures, ...skipped.map((s) => `skipped: ${s}`), ...nested] }
  }
}
