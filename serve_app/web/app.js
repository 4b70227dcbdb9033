// The talk page: wires the connection, the audio graph, the conversation log, the latency views and
// the settings together. Speaks the Realtime protocol of /v1/realtime (see the README).

import { AudioEngine, MicrophoneError, SERVER_RATE, base64Pcm } from "./audio.js";
import { RecentChart, parseMetrics, renderLatencyBar } from "./latency.js";
import { RealtimeConnection } from "./realtime.js";

const $ = (id) => document.getElementById(id);
const MIN_PUSH_TO_TALK_MS = 150; // a shorter press is a slip, not a question

const wsUrl = new URL("/v1/realtime", window.location.href);
wsUrl.protocol = wsUrl.protocol === "https:" ? "wss:" : "ws:";
const connection = new RealtimeConnection(wsUrl.href);
const audio = new AudioEngine();
const chart = new RecentChart($("latency-chart"));

const state = {
  running: false, // the user pressed Start
  session: null, // the server's session object
  activeResponse: null, // id of the response in progress
  dropAudioOf: new Set(), // responses the user interrupted: their late audio is not played
  talking: false, // push-to-talk held
  talkStartedAt: 0,
  instructionsEdited: false,
};

// Counters for anyone watching the page (and its browser tests).
const stats = {
  events: {}, // server events received, by type
  appendedMs: 0, // microphone audio sent
  bargeIns: 0, // times the page stopped its own playback because the user spoke
  interrupts: 0,
  turns: [], // metrics of finished responses
};
window.voiceAgent = {
  stats: () => ({ ...stats, playback: { ...audio.playback }, connected: connection.isOpen, session: state.session }),
};

// ---- what the user sees ------------------------------------------------------------------------

function notice(message, kind = "error") {
  const box = $("notice");
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = !message;
}

function activity(text) {
  $("activity").textContent = text;
}

function bubble(id, role) {
  let item = document.querySelector(`#log li[data-id="${CSS.escape(id)}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.id = id;
    item.className = `${role} interim`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Agent";
    const text = document.createElement("span");
    text.className = "text";
    item.append(who, text);
    $("log").append(item);
  }
  return item;
}

function setText(item, text, final) {
  item.querySelector(".text").textContent = text;
  item.classList.toggle("interim", !final);
  item.scrollIntoView({ block: "nearest" });
}

function appendText(item, delta) {
  const text = item.querySelector(".text");
  text.textContent += delta;
  item.scrollIntoView({ block: "nearest" });
}

// ---- settings ----------------------------------------------------------------------------------

function settings() {
  return {
    key: $("api-key").value.trim(),
    instructions: $("instructions").value,
    turnDetection: $("turn-detection").value,
    silenceMs: Number.parseInt($("silence-ms").value, 10),
    eagerness: $("eagerness").value,
    voice: $("voice").value,
    textOnly: $("text-only").checked,
    mic: {
      echoCancellation: $("echo-cancellation").checked,
      noiseSuppression: $("noise-suppression").checked,
      autoGainControl: $("auto-gain").checked,
    },
  };
}

function turnDetection(s) {
  if (s.turnDetection === "push_to_talk") return null;
  if (s.turnDetection === "semantic_vad") return { type: "semantic_vad", eagerness: s.eagerness };
  const detection = { type: "server_vad" };
  if (Number.isFinite(s.silenceMs)) detection.silence_duration_ms = s.silenceMs;
  return detection;
}

function sessionUpdate() {
  const s = settings();
  const output = { format: { type: "audio/pcm", rate: SERVER_RATE } };
  if (s.voice) output.voice = s.voice;
  const session = {
    type: "realtime",
    output_modalities: [s.textOnly ? "text" : "audio"],
    audio: {
      input: { format: { type: "audio/pcm", rate: SERVER_RATE }, turn_detection: turnDetection(s) },
      output,
    },
  };
  if (state.instructionsEdited) session.instructions = s.instructions;
  return { type: "session.update", session };
}

function showModeControls() {
  const mode = $("turn-detection").value;
  const pushToTalk = mode === "push_to_talk";
  $("ptt").hidden = !pushToTalk || !state.running;
  $("silence-row").hidden = mode !== "server_vad";
  $("eagerness-row").hidden = mode !== "semantic_vad";
}

// The server says which voice it uses (audio.output.voice) only when it offers a choice.
const OPENAI_VOICES = ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar"];

function adoptSession(session) {
  state.session = session;
  if (!state.instructionsEdited && !$("instructions").value) $("instructions").value = session.instructions || "";
  const voice = session.audio && session.audio.output && session.audio.output.voice;
  const select = $("voice");
  if (voice && select.disabled) {
    for (const name of OPENAI_VOICES) select.add(new Option(name, name));
    select.disabled = false;
    select.title = "";
  }
}

// ---- the conversation ----------------------------------------------------------------------------

function stopPlayback() {
  const wasPlaying = audio.playing;
  audio.flush();
  return wasPlaying;
}

function interrupt() {
  stats.interrupts += 1;
  stopPlayback();
  if (state.activeResponse) {
    state.dropAudioOf.add(state.activeResponse);
    connection.send({ type: "response.cancel" });
  }
  $("interrupt").disabled = true;
}

function onServerEvent(event) {
  stats.events[event.type] = (stats.events[event.type] || 0) + 1;
  switch (event.type) {
    case "session.created":
      adoptSession(event.session);
      connection.send(sessionUpdate());
      break;
    case "session.updated":
      adoptSession(event.session);
      break;
    case "input_audio_buffer.speech_started":
      // Barge-in: the server stops sending the reply now; stop what this page still has queued.
      if (stopPlayback() || state.activeResponse) stats.bargeIns += 1;
      bubble(event.item_id, "user");
      activity("Listening…");
      break;
    case "input_audio_buffer.speech_stopped":
      activity("Thinking…");
      break;
    case "input_audio_buffer.committed":
      bubble(event.item_id, "user");
      break;
    case "conversation.item.added": {
      const item = event.item;
      const part = item && item.role === "user" && (item.content || []).find((c) => c.type === "input_text");
      if (part) setText(bubble(item.id, "user"), part.text, true);
      break;
    }
    case "conversation.item.input_audio_transcription.delta":
      appendText(bubble(event.item_id, "user"), event.delta);
      break;
    case "conversation.item.input_audio_transcription.completed":
      setText(bubble(event.item_id, "user"), event.transcript || "(nothing recognised)", true);
      break;
    case "response.created":
      state.activeResponse = event.response.id;
      bubble(event.response.id, "agent");
      $("interrupt").disabled = false;
      activity("Answering…");
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      appendText(bubble(event.response_id, "agent"), event.delta);
      break;
    case "response.output_audio.delta":
      if (!state.dropAudioOf.has(event.response_id)) audio.play(event.delta);
      break;
    case "response.done":
      finishResponse(event.response);
      break;
    case "input_audio_buffer.timeout_triggered":
      activity("Are you still there?");
      break;
    case "error":
      notice(`The server reported a problem: ${event.error.message} (${event.error.code})`);
      break;
    default:
      break;
  }
}

function finishResponse(response) {
  if (state.activeResponse === response.id) state.activeResponse = null;
  state.dropAudioOf.delete(response.id); // no audio of it comes after its end
  const item = bubble(response.id, "agent");
  item.classList.remove("interim");
  item.dataset.status = response.status;
  if (response.status === "cancelled") item.classList.add("cut");
  if (response.status === "failed") {
    const error = (response.status_details && response.status_details.error) || {};
    notice(`The agent could not answer: ${error.message || error.code || "unknown error"}`);
  }
  const metrics = parseMetrics(response.metadata);
  if (metrics.e2e_latency !== undefined) {
    stats.turns.push(metrics);
    renderLatencyBar($("latency-bar"), metrics);
    chart.add(metrics);
  }
  $("interrupt").disabled = !audio.playing;
  activity(settings().turnDetection === "push_to_talk" ? "Hold the button (or Space) to talk." : "Listening for you…");
}

// ---- microphone ------------------------------------------------------------------------------------

audio.onChunk = (pcm) => {
  const s = $("turn-detection").value;
  if (s === "push_to_talk" && !state.talking) return;
  if (connection.send({ type: "input_audio_buffer.append", audio: base64Pcm(pcm) })) {
    stats.appendedMs += (pcm.byteLength / 2 / SERVER_RATE) * 1000;
  }
};
audio.onMicLevel = (level) => {
  $("mic-level").value = Math.min(1, level * 4);
};
audio.onPlayback = (report) => {
  $("out-level").value = Math.min(1, report.level * 4);
  if (!state.activeResponse) $("interrupt").disabled = report.queued === 0;
};

function startTalking() {
  if (state.talking || !connection.isOpen) return;
  if (stopPlayback() || state.activeResponse) interrupt();
  connection.send({ type: "input_audio_buffer.clear" });
  state.talking = true;
  state.talkStartedAt = performance.now();
  $("ptt").setAttribute("aria-pressed", "true");
  activity("Listening… release to send.");
}

function stopTalking() {
  if (!state.talking) return;
  state.talking = false;
  $("ptt").setAttribute("aria-pressed", "false");
  if (performance.now() - state.talkStartedAt < MIN_PUSH_TO_TALK_MS) {
    connection.send({ type: "input_audio_buffer.clear" });
    activity("Too short: hold the button while you speak.");
    return;
  }
  connection.send({ type: "input_audio_buffer.commit" });
  connection.send({ type: "response.create" });
  activity("Thinking…");
}

// ---- start and stop --------------------------------------------------------------------------------

async function start() {
  notice("");
  $("start").disabled = true;
  try {
    await audio.start(settings().mic);
  } catch (err) {
    $("start").disabled = false;
    if (err instanceof MicrophoneError) {
      notice(err.message);
      return;
    }
    throw err;
  }
  state.running = true;
  $("stop").disabled = false;
  showModeControls();
  connection.open(settings().key);
}

async function stop(closeConnection = true) {
  state.running = false;
  if (closeConnection) connection.close();
  await audio.stop();
  $("start").disabled = false;
  $("stop").disabled = true;
  $("interrupt").disabled = true;
  showModeControls();
  activity("Stopped.");
}

connection.addEventListener("server-event", (e) => onServerEvent(e.detail));
connection.addEventListener("state", (e) => {
  $("connection").dataset.state = e.detail.name;
  $("connection-text").textContent = e.detail.text;
  if (e.detail.name === "connected") {
    notice("");
    activity(settings().turnDetection === "push_to_talk" ? "Hold the button (or Space) to talk." : "Listening for you…");
  } else if (e.detail.name === "waiting" || e.detail.name === "connecting") {
    activity("Waiting for the server…");
  }
});
connection.addEventListener("problem", (e) => {
  notice(e.detail.message, e.detail.kind);
  if (e.detail.kind === "refused") {
    $("api-key").focus();
    stop(false); // keep the refusal on screen
  }
});
connection.addEventListener("closed", () => {
  state.activeResponse = null;
  stopPlayback();
});

$("start").addEventListener("click", () => start());
$("stop").addEventListener("click", () => stop());
$("interrupt").addEventListener("click", () => interrupt());
$("ptt").addEventListener("pointerdown", (e) => {
  e.preventDefault();
  startTalking();
});
for (const type of ["pointerup", "pointerleave", "pointercancel"]) $("ptt").addEventListener(type, stopTalking);
const typing = (target) => target.closest("input, textarea, select");
window.addEventListener("keydown", (e) => {
  if (e.code === "Space" && !e.repeat && !typing(e.target) && !$("ptt").hidden) {
    e.preventDefault();
    startTalking();
  }
});
window.addEventListener("keyup", (e) => {
  if (e.code === "Space" && !typing(e.target)) stopTalking();
});

$("instructions").addEventListener("input", () => {
  state.instructionsEdited = true;
});
$("turn-detection").addEventListener("change", showModeControls);
$("settings").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!state.running) return; // applied when the session starts
  const before = audio.context && audio.stream && audio.stream.getAudioTracks()[0].getSettings();
  const mic = settings().mic;
  const micChanged = before && before.echoCancellation !== mic.echoCancellation;
  if (micChanged || (before && (before.noiseSuppression !== mic.noiseSuppression || before.autoGainControl !== mic.autoGainControl))) {
    await stop();
    await start(); // the microphone's processing is fixed when it is opened
    return;
  }
  connection.send(sessionUpdate());
  stopTalking();
});
$("typed").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("typed-text").value.trim();
  if (!text) return;
  if (!connection.isOpen) {
    notice("Not connected: press Start first.");
    return;
  }
  if (state.activeResponse) interrupt();
  connection.send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  connection.send({ type: "response.create" });
  $("typed-text").value = "";
});
// A backend may open this page as `/#client_secret=ek_…` with a short-lived secret it minted for the
// user. The fragment never reaches any server; it is taken off the address at once. Long-lived keys
// are typed in Settings only, never put in a URL.
function takeSecretFromFragment() {
  const secret = new URLSearchParams(window.location.hash.slice(1)).get("client_secret");
  if (!window.location.hash) return;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  if (secret && secret.startsWith("ek_")) $("api-key").value = secret;
  else if (secret) notice("Only a client secret (ek_…) is taken from the address; type a key in Settings.");
}

takeSecretFromFragment();
showModeControls();
