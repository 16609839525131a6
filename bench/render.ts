// `node bench/render.ts bench/results/<stamp>.json`: redraws <stamp>.md and <stamp>.svg from a saved run.
import { readFileSync } from 'node:fs'
import { basename, dirname } from 'node:path'
import { writeOutputs } from './lib/output.ts'

const file = process.argv[2]
if (file === undefined || !file.endsWith('.json')) {
  console.error('usage: node bench/render.ts bench/results/<stamp>.json')
  process.exit(2)
}
const md = await writeOutputs(JSON.parse(readFileSync(file, 'utf8')), dirname(file), basename(file, '.json'), { json: false, log: (line) => console.error(line) })
console.log(md)
