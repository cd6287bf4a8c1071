// Render the formulas that pymdownx.arithmatex (generic mode) leaves in the page as
// \( ... \) and \[ ... \] inside elements of class "arithmatex". KaTeX is served from
// docs/assets/katex, so the rendered site needs no network.
function renderMath(root) {
  root.querySelectorAll(".arithmatex").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(function (_) { renderMath(document.body); });  // Material's instant navigation
} else {
  document.addEventListener("DOMContentLoaded", function () { renderMath(document.body); });
}
