// PRIP Prompt Refiner in the ComfyUI front end: failures as toasts, an unload button on
// the node, and the auto mode switch as a setting.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

function tell(message) {
  const toast = app.extensionManager?.toast;
  if (toast) toast.add({ severity: "warn", summary: "PRIP", detail: message, life: 8000 });
  else console.warn(message);
}

function setAuto(enabled) {
  api.fetchApi("/prip/auto", { method: "POST", body: JSON.stringify({ enabled: !!enabled }) });
}

app.registerExtension({
  name: "prip.refiner",
  settings: [
    {
      id: "PRIP.AutoRefine",
      name: "PRIP: refine the positive prompts of every queued workflow",
      type: "boolean",
      defaultValue: false,
      onChange: setAuto,
    },
  ],
  setup() {
    api.addEventListener("prip.status", ({ detail }) => tell(detail.message));
    setAuto(app.extensionManager?.setting?.get("PRIP.AutoRefine") ?? false);
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
