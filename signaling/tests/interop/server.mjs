// The npm bittorrent-tracker server, WebSocket only, as the reference and benchmark baseline.
// Usage: node server.mjs [port]   (0 or absent: a free port)
// Prints `listening on http://127.0.0.1:PORT` first, like swarmcast-signaling.
import { Server } from 'bittorrent-tracker'

const port = Number(process.argv[2] || 0)
const server = new Server({ udp: false, http: false, ws: true, stats: false, trustProxy: false })
server.on('error', err => { console.error('tracker error', err.message); process.exit(1) })
server.on('warning', () => {}) // bad client input: the reference only warns
server.listen(port, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.http.address().port}`)
})
const stop = () => server.close(() => process.exit(0))
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
