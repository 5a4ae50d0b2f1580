// Interop scenario: two npm bittorrent-tracker clients (unmodified; only WebRTC is faked, see
// fake-webrtc-polyfill) announce to the tracker: A at argv[2], B at argv[3] (default: the same
// URL, in which case the client library shares one WebSocket between them, as browsers do for
// several torrents; two URLs give two sockets). B's offers must reach A through the
// tracker, A's answer must come back to the very RTCPeerConnection of B that made that offer;
// announce replies and scrapes must carry the right counts; `stopped` must leave the swarm.
// Prints one JSON line and exits 0 on success, 1 on failure.
import { randomBytes } from 'node:crypto'
import Client from 'bittorrent-tracker'

const urlA = process.argv[2]
const urlB = process.argv[3] || urlA
const fail = msg => { console.log(JSON.stringify({ ok: false, error: msg, log: globalThis.fakeRtcLog })); process.exit(1) }
setTimeout(() => fail('timeout'), 20000).unref()

const infoHash = randomBytes(20).toString('hex')
const mk = (url, opts = {}) => {
  const c = new Client({ infoHash, peerId: randomBytes(20).toString('hex'), announce: [url], port: 6881, ...opts })
  c.on('error', err => fail(`client error: ${err.message}`))
  c.on('warning', err => fail(`client warning: ${err.message}`))
  return c
}
const next = (c, ev) => new Promise(resolve => c.once(ev, resolve))
const until = async (pred, what) => {
  for (let i = 0; i < 400; i++) {
    const v = pred()
    if (v) return v
    await new Promise(resolve => setTimeout(resolve, 10))
  }
  fail(`never: ${what}`)
}
const expect = (cond, msg) => { if (!cond) fail(msg) }

const a = mk(urlA)
a.start()
const ua = await next(a, 'update')
expect(ua.complete === 0 && ua.incomplete === 1, `A's first update ${JSON.stringify(ua)}`)

// B is a seeder (left: 0) and sends offers with its announce (5 by default).
const b = mk(urlB, { getAnnounceOpts: () => ({ left: 0 }) })
b.start()
const ub = await next(b, 'update')
expect(ub.complete === 1 && ub.incomplete === 1, `B's first update ${JSON.stringify(ub)}`)

const log = globalThis.fakeRtcLog
const gotOffer = await until(() => log.find(e => e.type === 'offer'), 'A receives an offer')
const gotAnswer = await until(() => log.find(e => e.type === 'answer'), 'B receives an answer')
expect(/^offer-\d+$/.test(gotOffer.remote), `offer marker ${gotOffer.remote}`)
expect(gotAnswer.remote === `answer-${gotOffer.pc}-to-${gotOffer.remote}`,
  `answer ${gotAnswer.remote} is not A's answer to ${gotOffer.remote}`)
expect(gotAnswer.local === gotOffer.remote,
  `answer applied to ${gotAnswer.local}, not to the connection that made ${gotOffer.remote}`)
expect(log.filter(e => e.type === 'offer').length === 1, 'exactly one offer forwarded (one other peer)')

a.scrape()
const s1 = await next(a, 'scrape')
expect(s1.complete === 1 && s1.incomplete === 1, `scrape ${JSON.stringify(s1)}`)

b.stop()
await next(b, 'update')
a.scrape()
const s2 = await next(a, 'scrape')
expect(s2.complete === 0 && s2.incomplete === 1, `scrape after stop ${JSON.stringify(s2)}`)

a.destroy()
b.destroy()
console.log(JSON.stringify({ ok: true, offer: gotOffer.remote, answer: gotAnswer.remote, scrape: s1 }))
process.exit(0)
