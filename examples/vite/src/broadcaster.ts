// Not imported by the app: type-checked by `tsc` (npm run build) to show, and keep honest, the
// broadcaster side of the package's types: a key, the muxer, a source peer publishing.
import { Muxer, StreamKey, SwarmPeer, init, type MuxedSegment } from 'swarmcast';

export async function startSource(tracker: string, savedSecret?: string): Promise<(chunk: EncodedVideoChunk) => void> {
  await init();
  const key = savedSecret ? StreamKey.fromSecret(savedSecret) : StreamKey.generate();
  const peer = new SwarmPeer({ secret: key.secret(), trackers: [tracker], uploadKbps: 6000 });
  peer.start();
  const muxer = new Muxer(500_000, true, false);
  const publish = (segments: MuxedSegment[]) => {
    const init = muxer.takeInit();
    for (const s of segments) peer.publishSegment(s.ptsUs, s.durationUs, s.keyframe, s.data);
    if (init) peer.publishInit(init.mime, init.data);
  };
  console.log(`broadcasting ${key.streamId()} as ${peer.stats()?.role}`);
  return (chunk) => {
    const data = new Uint8Array(chunk.byteLength);
    chunk.copyTo(data);
    publish(muxer.pushVideo(chunk.timestamp, chunk.duration ?? 0, chunk.type === 'key', data));
  };
}
