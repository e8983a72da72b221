// Small DOM helpers, and the one place that puts an API error next to its field.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "style") setStyle(node, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Styles go through the CSSOM: the console's CSP refuses style attributes.
function setStyle(node, text) {
  for (const rule of text.split(";")) {
    const colon = rule.indexOf(":");
    if (colon > 0) node.style.setProperty(rule.slice(0, colon).trim(), rule.slice(colon + 1).trim());
  }
}

export function announce(text) {
  const region = document.getElementById("announce");
  region.textContent = "";
  requestAnimationFrame(() => (region.textContent = text));
}

export function clearErrors(root) {
  for (const slot of root.querySelectorAll(".field-error")) slot.textContent = "";
  for (const node of root.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

// The field an error names, as the spec writes it: "spec.classes[0].boxes" and
// "classes[0].boxes" are the same place.
function candidates(field) {
  const names = [];
  let name = (field || "").replace(/^spec\.?/, "").replace(/^body\.?/, "");
  while (name) {
    names.push(name);
    const cut = Math.max(name.lastIndexOf("."), name.lastIndexOf("["));
    name = cut > 0 ? name.slice(0, cut) : "";
  }
  return names;
}

// Show an error as the API words it, in the slot of the closest element that
// holds the field it names (data-field), or in `fallback`.
export function showError(root, error, fallback) {
  let target = null;
  for (const name of candidates(error.field)) {
    target = root.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (!target && name === "Authorization") target = document.getElementById("auth");
    if (target) break;
  }
  const slot = (target && target.querySelector(":scope > .field-error")) || fallback;
  const code = error.code ? `${error.code}: ` : "";
  slot.textContent = `${code}${error.message}`;
  slot.dataset.field = error.field || "";
  if (target) {
    const input = target.matches("input, select, textarea") ? target : target.querySelector("input, select");
    if (input) {
      input.setAttribute("aria-invalid", "true");
      if (!slot.id) slot.id = `error-${Math.random().toString(36).slice(2)}`;
      input.setAttribute("aria-describedby", slot.id);
    }
  }
  return slot;
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export const CLASS_COLOURS = ["#e4572e", "#17bebb", "#ffc914", "#76b041", "#a06cd5", "#2e86ab"];
