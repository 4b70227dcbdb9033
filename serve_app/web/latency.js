// Per-turn latency from `response.done.response.metadata` (milliseconds, as strings): a timeline bar of
// the turn's parts, and a rolling chart of recent turns' end-to-end latency.

// Each part drawn where it happened, on one axis from the end of the user's speech (typed turns: from
// the request). Parts overlap: transcription runs alongside end-of-turn detection, and a reply prepared
// during a pause starts its LLM call before the turn is detected (`preemptive_lead`).
export const PARTS = [
  { key: "end_of_turn_delay", label: "end of turn", color: "#6c8ebf" },
  { key: "transcription_delay", label: "transcription", color: "#82b366" },
  { key: "llm_ttft", label: "LLM first token", color: "#d79b00" },
  { key: "llm_ttfs", label: "first phrase", color: "#e3b04b" },
  { key: "tts_ttfb", label: "TTS first audio", color: "#b85450" },
  { key: "e2e_latency", label: "end to end", color: "#444" },
];

export function parseMetrics(metadata) {
  const metrics = {};
  for (const [key, value] of Object.entries(metadata || {})) {
    const ms = Number.parseFloat(value);
    if (Number.isFinite(ms)) metrics[key] = ms;
  }
  return metrics;
}

// [start, end] of each part in ms from the turn's origin.
function spans(m) {
  const eot = m.end_of_turn_delay;
  const stt = m.transcription_delay;
  const spoken = eot !== undefined;
  // When the LLM call began: before the turn was detected for a reply prepared during a pause; else
  // its first phrase went straight to TTS, whose first audio is the end of the end-to-end figure.
  let llmStart = 0;
  if (m.preemptive_lead && spoken) llmStart = eot - m.preemptive_lead;
  else if (m.e2e_latency !== undefined && m.llm_ttfs !== undefined) {
    llmStart = Math.max(0, m.e2e_latency - (m.tts_ttfb ?? 0) - m.llm_ttfs);
  }
  const out = {};
  if (spoken) out.end_of_turn_delay = [0, eot];
  if (stt !== undefined) out.transcription_delay = [0, stt];
  if (m.llm_ttft !== undefined) out.llm_ttft = [llmStart, llmStart + m.llm_ttft];
  if (m.llm_ttfs !== undefined) out.llm_ttfs = [llmStart, llmStart + m.llm_ttfs];
  if (m.tts_ttfb !== undefined && m.e2e_latency !== undefined) {
    // TTS's first audio is what the end-to-end figure waits for last.
    out.tts_ttfb = [Math.max(0, m.e2e_latency - m.tts_ttfb), m.e2e_latency];
  }
  if (m.e2e_latency !== undefined) out.e2e_latency = [0, m.e2e_latency];
  return out;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function renderLatencyBar(container, metrics) {
  const placed = spans(metrics);
  const values = Object.values(placed);
  container.replaceChildren();
  if (!values.length) {
    container.append(element("p", "empty", "This turn reported no latency figures."));
    return;
  }
  const axis = Math.max(...values.map(([, end]) => end), 1);
  for (const part of PARTS) {
    if (!(part.key in placed)) continue;
    const [start, end] = placed[part.key];
    const row = element("div", "part");
    row.dataset.metric = part.key;
    row.append(element("span", "name", part.label));
    const track = element("span", "track");
    const bar = element("span", "bar");
    bar.style.left = `${(100 * Math.max(0, start)) / axis}%`;
    bar.style.width = `${Math.max(0.5, (100 * (end - Math.max(0, start))) / axis)}%`;
    bar.style.background = part.color;
    track.append(bar);
    row.append(track, element("span", "value", `${Math.round(metrics[part.key])} ms`));
    container.append(row);
  }
  if (metrics.preemptive_lead) {
    container.append(
      element("p", "note", `Reply prepared during your pause: its LLM call began ${Math.round(metrics.preemptive_lead)} ms before the turn ended.`),
    );
  }
}

// End-to-end latency of the last `size` turns as bars, end of turn shaded within each.
export class RecentChart {
  constructor(canvas, size = 20) {
    this.canvas = canvas;
    this.size = size;
    this.turns = [];
  }

  add(metrics) {
    if (metrics.e2e_latency === undefined) return;
    this.turns.push(metrics);
    if (this.turns.length > this.size) this.turns.shift();
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const g = canvas.getContext("2d");
    const w = canvas.width;
    const h = canvas.height;
    const top = 14;
    g.clearRect(0, 0, w, h);
    const max = Math.max(500, ...this.turns.map((t) => t.e2e_latency));
    const slot = w / this.size;
    this.turns.forEach((t, i) => {
      const x = i * slot + 2;
      const full = ((h - top) * t.e2e_latency) / max;
      g.fillStyle = PARTS[5].color;
      g.fillRect(x, h - full, slot - 4, full);
      const eot = Math.min(t.end_of_turn_delay || 0, t.e2e_latency);
      g.fillStyle = PARTS[0].color;
      g.fillRect(x, h - ((h - top) * eot) / max, slot - 4, ((h - top) * eot) / max);
    });
    g.fillStyle = "#666";
    g.font = "11px system-ui, sans-serif";
    g.fillText(`${Math.round(max)} ms`, 2, 11);
    g.strokeStyle = "#ccc";
    g.beginPath();
    g.moveTo(0, top + 0.5);
    g.lineTo(w, top + 0.5);
    g.stroke();
  }
}
