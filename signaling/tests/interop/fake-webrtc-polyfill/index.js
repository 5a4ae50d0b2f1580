// A fake RTCPeerConnection, enough for @thaunknown/simple-peer with trickle: false.
// Offers carry `a=swarmcast-fake:offer-<n>`; an answer carries `a=swarmcast-fake:answer-<m>-to-offer-<n>`
// naming the offer it answers, so a test can check that an answer reached the connection that
// made that very offer. Every remote description applied is recorded in `globalThis.fakeRtcLog`.

let nextId = 0
globalThis.fakeRtcLog = globalThis.fakeRtcLog || []

const marker = sdp => (/a=swarmcast-fake:(\S+)/.exec(sdp || '') || [])[1]

export class RTCSessionDescription {
  constructor (init = {}) {
    this.type = init.type
    this.sdp = init.sdp
  }

  toJSON () { return { type: this.type, sdp: this.sdp } }
}

export class RTCIceCandidate {
  constructor (init = {}) { Object.assign(this, init) }
}

class FakeChannel {
  constructor (label) {
    this.label = label
    this.readyState = 'connecting'
    this.bufferedAmount = 0
    this.bufferedAmountLowThreshold = 0
    this.binaryType = 'arraybuffer'
  }

  send () { throw new Error('fake data channel never opens') }
  close () { this.readyState = 'closed' }
}

export class RTCPeerConnection {
  constructor (config) {
    this.id = ++nextId
    this.config = config
    this.signalingState = 'stable'
    this.iceConnectionState = 'new'
    this.iceGatheringState = 'new'
    this.connectionState = 'new'
    this.localDescription = null
    this.remoteDescription = null
  }

  createDataChannel (label) { return new FakeChannel(label) }

  async createOffer () {
    return { type: 'offer', sdp: `v=0\r\no=- ${this.id} 2 IN IP4 127.0.0.1\r\na=swarmcast-fake:offer-${this.id}\r\n` }
  }

  async createAnswer () {
    const to = marker(this.remoteDescription && this.remoteDescription.sdp)
    return { type: 'answer', sdp: `v=0\r\no=- ${this.id} 2 IN IP4 127.0.0.1\r\na=swarmcast-fake:answer-${this.id}-to-${to}\r\n` }
  }

  async setLocalDescription (desc) {
    this.localDescription = new RTCSessionDescription(desc)
    this.signalingState = desc.type === 'offer' ? 'have-local-offer' : 'stable'
    // Gathering "finishes" at once: simple-peer then emits the complete offer/answer.
    setTimeout(() => {
      this.iceGatheringState = 'complete'
      if (this.onicegatheringstatechange) this.onicegatheringstatechange()
      if (this.onicecandidate) this.onicecandidate({ candidate: null })
    }, 1)
  }

  async setRemoteDescription (desc) {
    this.remoteDescription = new RTCSessionDescription(desc)
    this.signalingState = desc.type === 'offer' ? 'have-remote-offer' : 'stable'
    globalThis.fakeRtcLog.push({
      pc: this.id,
      type: desc.type,
      local: marker(this.localDescription && this.localDescription.sdp),
      remote: marker(desc.sdp)
    })
  }

  async addIceCandidate () {}
  async getStats () { return new Map() }
  getSenders () { return [] }
  getTransceivers () { return [] }
  close () { this.signalingState = 'closed'; this.connectionState = 'closed' }
}

export default { RTCPeerConnection, RTCSessionDescription, RTCIceCandidate }
