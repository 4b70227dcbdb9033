// One Realtime WebSocket to the agent, reconnected when it drops, with plain-language states.
//
// Browsers cannot set headers on a WebSocket, so a key travels as the subprotocol
// `openai-insecure-api-key.<key>` (as OpenAI's browser clients send it), never in the URL.

const KEY_SUBPROTOCOL = "openai-insecure-api-key.";
const POLICY_VIOLATION = 1008; // the server refused the key or the session
const TRY_AGAIN_LATER = 1013; // the server is full
const RETRY_DELAYS_S = [1, 2, 4, 8, 15];

// What a refused session (close 1008, after one `error` event) means to the user: [state, message].
function refusal(error, key) {
  const retry = "and press Start.";
  switch (error.code) {
    case "invalid_api_key":
      return key
        ? ["Key refused", `The server refused the key. Check it in Settings ${retry}`]
        : ["Key needed", `This server needs a key. Enter one in Settings ${retry}`];
    case "expired_client_secret":
      return ["Key refused", `The server refused the key: the client secret has expired. Get a new one ${retry}`];
    case "revoked_client_secret":
      return ["Key refused", `The server refused the key: the client secret was revoked. Get a new one ${retry}`];
    case "user_mismatch":
    case "invalid_user":
    case "permission_denied":
      return ["Key refused", `The server refused the key for this user: ${error.message}`];
    default:
      return ["Closed by the server", `The server closed the session: ${error.message} (${error.code})`];
  }
}

export class RealtimeConnection extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.socket = null;
    this.key = "";
    this.wanted = false; // the user asked to be connected (reconnect when it drops)
    this.attempt = 0;
    this.retryTimer = null;
    this.lastError = null; // the last `error` event, to explain a refusal
  }

  open(key) {
    this.key = key;
    this.wanted = true;
    this.attempt = 0;
    this.connect();
  }

  close() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    if (this.socket) this.socket.close(1000, "closed by the user");
    this.socket = null;
    this.state("idle", "Not connected");
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(event) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(event));
    return true;
  }

  connect() {
    clearTimeout(this.retryTimer);
    const protocols = ["realtime"];
    if (this.key) protocols.push(KEY_SUBPROTOCOL + this.key);
    let socket;
    try {
      socket = new WebSocket(this.url, protocols);
    } catch (err) {
      this.wanted = false;
      this.state("failed", "Cannot connect");
      this.problem("The key contains characters that cannot be sent; check it in Settings.");
      return;
    }
    this.socket = socket;
    this.lastError = null;
    let opened = false;
    this.state("connecting", this.attempt ? `Reconnecting (attempt ${this.attempt + 1})…` : "Connecting…");
    socket.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.state("connected", "Connected");
    };
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // the server only sends JSON; ignore anything else
      }
      if (event.type === "error") this.lastError = event.error;
      this.dispatchEvent(new CustomEvent("server-event", { detail: event }));
    };
    socket.onclose = (close) => {
      if (this.socket !== socket) return; // an older socket, already replaced
      this.socket = null;
      this.dispatchEvent(new CustomEvent("closed", { detail: { opened } }));
      if (!this.wanted) return;
      if (close.code === POLICY_VIOLATION) {
        this.wanted = false;
        const error = this.lastError || { code: "refused", message: close.reason };
        const [state, message] = refusal(error, this.key);
        this.state("refused", state);
        this.problem(message, "refused");
        return;
      }
      const delay = RETRY_DELAYS_S[Math.min(this.attempt, RETRY_DELAYS_S.length - 1)];
      this.attempt += 1;
      if (close.code === TRY_AGAIN_LATER) {
        this.problem(`The server is busy (${close.reason || "at capacity"}). Trying again in ${delay} s.`, "busy");
      } else if (!opened) {
        this.problem(`Cannot reach the server at ${this.url}. Is it running? Trying again in ${delay} s.`, "unreachable");
      } else {
        this.problem(`The connection to the server was lost. Reconnecting in ${delay} s.`, "lost");
      }
      this.state("waiting", `Disconnected, retrying in ${delay} s`);
      this.retryTimer = setTimeout(() => this.connect(), delay * 1000);
    };
  }

  state(name, text) {
    this.dispatchEvent(new CustomEvent("state", { detail: { name, text } }));
  }

  problem(message, kind) {
    this.dispatchEvent(new CustomEvent("problem", { detail: { message, kind } }));
  }
}
