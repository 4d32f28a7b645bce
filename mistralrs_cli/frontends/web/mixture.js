// The X-LoRA mixture made visible: under an answer, each token underlined in the colour of the
// adapter whose scaling was largest for it (from the `xlora_scalings` extension, which gives
// per token the layer-mean scaling of every adapter).

// Distinct hues that read on light and dark backgrounds; more adapters cycle through them.
const COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];

export function adapterColour(k) {
  return COLOURS[k % COLOURS.length];
}

/**
 * Render `mixture` ({adapters, scalings: [[...per adapter] per token], pieces: [token text]})
 * into `container`: a legend, then the tokens, each with its dominant adapter as colour.
 */
export function renderMixture(mixture, container) {
  const fragment = document.createDocumentFragment();
  const legend = document.createElement("p");
  legend.className = "mixture-legend";
  legend.append("Dominant adapter per token: ");
  mixture.adapters.forEach((name, k) => {
    const key = document.createElement("span");
    key.className = "mixture-key";
    key.style.setProperty("--adapter", adapterColour(k));
    key.textContent = name;
    legend.append(key, " ");
  });
  fragment.appendChild(legend);
  const tokens = document.createElement("p");
  tokens.className = "mixture-tokens";
  const count = Math.min(mixture.scalings.length, mixture.pieces.length);
  for (let t = 0; t < count; t++) {
    const row = mixture.scalings[t];
    const top = row.indexOf(Math.max(...row));
    const span = document.createElement("span");
    span.className = "mixture-token";
    span.style.setProperty("--adapter", adapterColour(top));
    span.textContent = mixture.pieces[t];
    const total = row.reduce((a, b) => a + Math.abs(b), 0) || 1;
    span.title = mixture.adapters.map((name, k) => `${name}: ${((100 * Math.abs(row[k])) / total).toFixed(0)}%`).join(", ");
    tokens.appendChild(span);
  }
  fragment.appendChild(tokens);
  container.replaceChildren(fragment);
}
