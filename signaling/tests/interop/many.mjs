// Issue 24: one npm bittorrent-tracker client process announcing N torrents (argv[3], default
// 100) to the tracker at argv[2], all on one shared WebSocket as WebTorrent does, with one
// peer id for all of them. Prints one JSON line: how many torrents got their first `update`
// within argv[4] ms (default 10,000), how long the last one took, and every warning or error
// (a failure reply without `action` makes the client tear the shared socket down).
import { randomBytes } from 'node:crypto'
import Client from 'bittorrent-tracker'

const url = process.argv[2]
const n = Number(process.argv[3] || 100)
const within = Number(process.argv[4] || 10000)
const peerId = randomBytes(20).toString('hex')
const t0 = Date.now()
const updated = new Set()
const warnings = []
const errors = []
let last = 0
const clients = []
for (let i = 0; i < n; i++) {
  const c = new Client({ infoHash: randomBytes(20).toString('hex'), peerId, announce: [url], port: 6881 })
  c.on('update', () => {
    if (!updated.has(i)) { updated.add(i); last = Date.now() - t0 }
  })
  c.on('warning', err => warnings.push(err.message))
  c.on('error', err => errors.push(err.message))
  c.start()
  clients.push(c)
}
const done = () => {
  console.log(JSON.stringify({ torrents: n, updated: updated.size, last_ms: last, warnings, errors }))
  for (const c of clients) c.destroy()
  process.exit(0)
}
const poll = setInterval(() => {
  if (updated.size === n || Date.now() - t0 >= within) { clearInterval(poll); done() }
}, 20)
