// Microphone → PCM16 at the server's input rate, in chunks of `chunkMs`, off the main thread.
// Runs in the AudioWorklet scope: `sampleRate` is the context's rate, `currentFrame` its clock.

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, chunkMs } = options.processorOptions;
    this.step = sampleRate / targetRate; // input samples per output sample
    this.pos = 0; // fractional read position into `this.carry` + the new block
    this.carry = new Float32Array(0); // unread input kept between blocks (interpolation needs the next one)
    this.chunk = new Int16Array(Math.round((targetRate * chunkMs) / 1000));
    this.filled = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no input connected yet
    const data = new Float32Array(this.carry.length + channel.length);
    data.set(this.carry);
    data.set(channel, this.carry.length);
    // Linear interpolation: enough for speech recognition (the STT works at 16 kHz).
    while (this.pos + 1 < data.length) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const x = data[i] + (data[i + 1] - data[i]) * frac;
      const clipped = Math.max(-1, Math.min(1, x));
      this.chunk[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
      this.sumSquares += clipped * clipped;
      if (this.filled === this.chunk.length) this.flush();
      this.pos += this.step;
    }
    const used = Math.floor(this.pos);
    this.carry = data.slice(used);
    this.pos -= used;
    return true;
  }

  flush() {
    const pcm = this.chunk.slice(0, this.filled);
    const level = Math.sqrt(this.sumSquares / Math.max(1, this.filled));
    this.port.postMessage({ pcm: pcm.buffer, level }, [pcm.buffer]);
    this.filled = 0;
    this.sumSquares = 0;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
