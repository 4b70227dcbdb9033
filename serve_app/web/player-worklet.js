// Gapless playback of streamed PCM16 reply audio, with an instant flush for barge-in.
// The main thread posts {type: "push", samples: Float32Array at `sourceRate`} and {type: "flush"};
// this plays the queue back to back (resampled to the context's rate) and reports what it has played:
// the samples that reached the audio graph, so the page (and its tests) can count them.

const AUDIBLE = 0.001; // -60 dBFS

class ReplyPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.step = options.processorOptions.sourceRate / sampleRate; // source samples per output sample
    this.queue = []; // Float32Arrays at the source rate
    this.index = 0; // next unplayed sample in queue[0]
    this.phase = 0; // fraction of the way from that sample to the next one
    this.queued = 0; // source samples not yet played
    this.played = 0; // source samples played since the start
    this.audible = 0; // of which louder than -60 dBFS
    this.flushed = 0; // source samples dropped by flushes
    this.sumSquares = 0;
    this.frames = 0;
    this.port.onmessage = (event) => {
      const message = event.data;
      if (message.type === "push") {
        this.queue.push(message.samples);
        this.queued += message.samples.length;
      } else if (message.type === "flush") {
        this.flushed += this.queued;
        this.queue = [];
        this.index = 0;
        this.phase = 0;
        this.queued = 0;
        this.report();
      }
    };
  }

  // The sample after the current one (across chunks); the current one at the very end of the queue.
  next() {
    const chunk = this.queue[0];
    if (this.index + 1 < chunk.length) return chunk[this.index + 1];
    return this.queue.length > 1 ? this.queue[1][0] : chunk[this.index];
  }

  // Move on by one source sample, counting it as played.
  consume() {
    const chunk = this.queue[0];
    this.played++;
    if (Math.abs(chunk[this.index]) > AUDIBLE) this.audible++;
    this.queued--;
    if (++this.index >= chunk.length) {
      this.queue.shift();
      this.index = 0;
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (let n = 0; n < out.length; n++) {
      if (!this.queue.length) {
        out.fill(0, n);
        break;
      }
      const a = this.queue[0][this.index];
      const x = a + (this.next() - a) * this.phase; // linear interpolation
      out[n] = x;
      this.sumSquares += x * x;
      this.phase += this.step;
      while (this.phase >= 1 && this.queue.length) {
        this.phase -= 1;
        this.consume();
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.frames += out.length;
    if (this.frames >= 1024) this.report();
    return true;
  }

  report() {
    const level = this.frames ? Math.sqrt(this.sumSquares / this.frames) : 0;
    this.sumSquares = 0;
    this.frames = 0;
    this.port.postMessage({
      played: this.played,
      audible: this.audible,
      queued: this.queued,
      flushed: this.flushed,
      level,
    });
  }
}

registerProcessor("reply-player", ReplyPlayer);
