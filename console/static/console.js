// The console's only script: a copy button for a secret just issued, and
// the typed confirmation that enables "Yes, Continue". Every page works
// without it.
"use strict";

document.querySelectorAll("button[data-copy]").forEach(function (button) {
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source) {
    return;
  }
  button.hidden = false;
  var label = button.textContent;
  function copied(text) {
    button.textContent = text;
    window.setTimeout(function () { button.textContent = label; }, 2500);
  }
  function bySelection() {
    var range = document.createRange();
    range.selectNodeContents(source);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    copied(ok ? "Copied" : "Press Ctrl+C");
  }
  button.addEventListener("click", function () {
    var text = source.textContent.trim();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { copied("Copied"); }, bySelection);
    } else {
      bySelection();
    }
  });
});

document.querySelectorAll("input[data-confirm]").forEach(function (input) {
  var button = document.getElementById(input.getAttribute("data-confirm-button"));
  if (!button) {
    return;
  }
  var word = input.getAttribute("data-confirm");
  function sync() { button.disabled = input.value.trim() !== word; }
  input.addEventListener("input", sync);
  sync();
});
