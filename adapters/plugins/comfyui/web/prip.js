// PRIP Prompt Refiner in the ComfyUI front end: failures as toasts, an unload button on
// the node, and the auto mode switch as a setting.
//
// Auto mode lives on the server (PRIP_AUTO=1, POST /prip/auto from any client), so the
// setting only mirrors it: on page load it shows what GET /prip/auto says, and only a
// change the user makes that differs from the server's state is POSTed. The front end
// also calls onChange when the setting is registered and when setup() syncs it; neither
// may reach the server, or opening the page would overwrite the server's state.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const SETTING = "PRIP.AutoRefine";
// The server's auto mode as last read or written: undefined until setup() has asked,
// null when it could not be read (then a change is sent as it is).
let server;

function tell(message) {
  const toast = app.extensionManager?.toast;
  if (toast) toast.add({ severity: "warn", summary: "PRIP", detail: message, life: 8000 });
  else console.warn(message);
}

async function autoMode(init) {
  const res = await api.fetchApi("/prip/auto", init);
  const data = await res.json();
  if (!res.ok) throw new Error(data?.error ?? `/prip/auto answered ${res.status}`);
  return !!data.enabled;
}

async function onChange(value) {
  const enabled = !!value;
  if (server === undefined || enabled === server) return;
  try {
    server = await autoMode({ method: "POST", body: JSON.stringify({ enabled }) });
  } catch (e) {
    tell(`PRIP: auto mode not switched: ${e.message}`);
  }
}

app.registerExtension({
  name: "prip.refiner",
  settings: [
    {
      id: SETTING,
      name: "PRIP: refine the positive prompts of every queued workflow",
      type: "boolean",
      defaultValue: false,
      onChange,
    },
  ],
  async setup() {
    api.addEventListener("prip.status", ({ detail }) => tell(detail.message));
    let state = null;
    try {
      state = await autoMode();
    } catch (e) {
      tell(`PRIP: could not read auto mode: ${e.message}`);
    }
    server = state;
    // Equal to the server's state, so onChange sends nothing.
    if (state !== null) await app.extensionManager?.setting?.set(SETTING, state);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "PripPromptRefiner") return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      if (output?.prip_failed) tell(output.prip.join(" "));
    };
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.addWidget("button", "unload refiner", null, async () => {
        const res = await api.fetchApi("/prip/unload", { method: "POST" });
        tell((await res.json()).unloaded ? "PRIP: refiner unloaded" : "PRIP: no refiner was loaded");
      }, { serialize: false });
      return r;
    };
  },
});
