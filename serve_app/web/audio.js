// The page's audio graph: microphone → capture worklet (PCM16 at the server's rate), and streamed reply
// audio → player worklet (gapless, flushable) → speakers. One AudioContext for both.

export const SERVER_RATE = 24000; // PCM16 mono, both ways (the protocol's default)
const CHUNK_MS = 40; // microphone audio per append

export class MicrophoneError extends Error {}

// Why getUserMedia failed, in words a user can act on.
function microphoneProblem(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone permission was refused. Allow the microphone for this page (the icon in the address bar) and press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Connect one and press Start again.";
    case "NotReadableError":
    case "AbortError":
      return "The microphone could not be opened; another application may be using it.";
    default:
      return `The microphone could not be opened: ${(err && err.message) || err}`;
  }
}

export class AudioEngine {
  constructor() {
    this.context = null;
    this.stream = null;
    this.source = null;
    this.capture = null;
    this.player = null;
    this.onChunk = () => {};
    this.onMicLevel = () => {};
    this.onPlayback = () => {};
    this.playback = { played: 0, audible: 0, queued: 0, flushed: 0, level: 0 };
  }

  // Open the microphone with the given processing switches and start both worklets.
  async start({ echoCancellation, noiseSuppression, autoGainControl }) {
    if (!window.isSecureContext || !navigator.mediaDevices) {
      throw new MicrophoneError(
        "The microphone needs a secure page: open this page over https, or on localhost.",
      );
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation, noiseSuppression, autoGainControl },
      });
    } catch (err) {
      throw new MicrophoneError(microphoneProblem(err));
    }
    try {
      // At the server's rate when the browser allows it (no resampling at all); else the device's.
      this.context = new AudioContext({ sampleRate: SERVER_RATE, latencyHint: "interactive" });
      await this.wire();
    } catch (err) {
      if (this.context) await this.context.close();
      this.context = new AudioContext({ latencyHint: "interactive" });
      await this.wire();
    }
    await this.context.resume();
  }

  async wire() {
    const base = new URL(".", import.meta.url);
    await this.context.audioWorklet.addModule(new URL("capture-worklet.js", base));
    await this.context.audioWorklet.addModule(new URL("player-worklet.js", base));
    this.source = this.context.createMediaStreamSource(this.stream);
    this.capture = new AudioWorkletNode(this.context, "pcm16-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { targetRate: SERVER_RATE, chunkMs: CHUNK_MS },
    });
    this.capture.port.onmessage = (event) => {
      this.onMicLevel(event.data.level);
      this.onChunk(event.data.pcm);
    };
    this.source.connect(this.capture);
    this.player = new AudioWorkletNode(this.context, "reply-player", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { sourceRate: SERVER_RATE },
    });
    this.player.port.onmessage = (event) => {
      this.playback = event.data;
      this.onPlayback(event.data);
    };
    this.player.connect(this.context.destination);
  }

  // Queue base64 PCM16 reply audio behind what is already queued.
  play(base64) {
    if (!this.player) return;
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
    this.player.port.postMessage({ type: "push", samples }, [samples.buffer]);
    this.playback.queued += samples.length; // until the worklet's next report
  }

  // Drop every queued sample now (barge-in, interrupt).
  flush() {
    if (this.player) this.player.port.postMessage({ type: "flush" });
    this.playback.queued = 0;
  }

  get playing() {
    return this.playback.queued > 0;
  }

  async stop() {
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.context) await this.context.close();
    this.context = this.stream = this.source = this.capture = this.player = null;
    this.playback = { played: 0, audible: 0, queued: 0, flushed: 0, level: 0 };
  }
}

// PCM16 bytes → base64, for input_audio_buffer.append.
export function base64Pcm(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
