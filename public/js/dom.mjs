// Building DOM nodes safely: text always goes in as text nodes (textContent), never as
// HTML, and there is no way to set inline styles (the page runs under a strict CSP).

/**
 * `el('li', { class: 'x', text: userString, 'aria-label': ... }, child, ...)`.
 * Props: `class`, `text` (textContent), `dataset` (object), `on<event>` (listener),
 * anything else becomes an attribute (true: present, false/null/undefined: absent).
 * String children become text nodes.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (key === 'style' || key === 'innerHTML' || key === 'outerHTML' || key === 'srcdoc') {
      throw new Error(`el(): refusing to set ${key}`);
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** Shows `text` in an element (an error line, say), or hides it when empty. */
export function setMessage(node, text) {
  node.textContent = text || '';
  node.hidden = !text;
}

/** Looks an element up by id; throws early when the page and the code disagree. */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing element #${id}`);
  return node;
}
