/*
 * Notebook pages (mkdocs-jupyter): fold every code cell behind a "Code" summary, so the
 * plots and the prose read first and the code is one click away. Plain JavaScript, no CDN.
 */
(function () {
  "use strict";

  function fold() {
    document.querySelectorAll(".jupyter-wrapper .jp-CodeCell .jp-Cell-inputWrapper").forEach(function (input) {
      if (input.parentElement && input.parentElement.tagName === "DETAILS") return;
      var details = document.createElement("details");
      details.className = "nb-code";
      var summary = document.createElement("summary");
      summary.textContent = "Code";
      details.appendChild(summary);
      input.parentNode.insertBefore(details, input);
      details.appendChild(input);
    });
  }

  if (window.document$ && window.document$.subscribe) window.document$.subscribe(fold);
  else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fold);
  else fold();
})();
