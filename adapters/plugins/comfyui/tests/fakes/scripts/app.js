// Fake of ComfyUI's front end scripts/app.js, the parts prip.js uses, with the setting
// store's semantics of the frontend ComfyUI 0.3.64 ships (src/stores/settingStore.ts):
// registering a setting calls its onChange(current value, undefined) at once; set()
// does nothing for an equal value, else calls onChange(new, old) synchronously, then
// stores the value.
export const stored = {}; // the user's saved settings (comfy.settings.json)
export const toasts = [];
const settings = {};
const extensions = [];

function get(id) {
  return stored[id] ?? settings[id]?.defaultValue;
}

async function set(id, value) {
  const old = get(id);
  if (value === old) return;
  settings[id]?.onChange?.(value, old);
  stored[id] = value;
}

export const app = {
  extensionManager: {
    setting: { get, set },
    toast: { add: (t) => toasts.push(t) },
  },
  registerExtension(extension) {
    extensions.push(extension);
    for (const setting of extension.settings ?? []) {
      settings[setting.id] = setting;
      setting.onChange?.(get(setting.id), undefined);
    }
  },
  // What the app runs once the page has loaded: every extension's setup().
  async setupExtensions() {
    for (const extension of extensions) await extension.setup?.(app);
  },
};
