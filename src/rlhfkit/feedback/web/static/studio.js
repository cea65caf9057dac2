// Keyboard shortcuts for the labelling page. Every control that has one carries
// data-keys="k1 k2"; a radio is chosen, a checkbox toggled, a button pressed. Enter submits
// the label. Ranking pages take digits: each press puts that output in the next place.
// Without this script every page still works with the mouse.
"use strict";

function typing(target) {
  return target.matches("textarea, select, input:not([type=radio]):not([type=checkbox])");
}

function rankNext(form, key) {
  const menus = Array.from(form.querySelectorAll("select[data-rank]"));
  if (key === "0") {
    menus.forEach((menu) => { menu.value = ""; });
    return true;
  }
  const menu = menus[Number(key) - 1];
  if (!menu || menu.value) return Boolean(menu);
  menu.value = String(menus.filter((other) => other.value).length + 1);
  return true;
}

document.addEventListener("keydown", (event) => {
  const form = document.getElementById("label-form");
  if (event.key === "Escape" && typing(event.target)) {
    event.target.blur();
    return;
  }
  if (event.key === "Enter" && form && (!typing(event.target) || event.ctrlKey || event.metaKey)) {
    if (event.target.matches("button")) return;  // a focused button answers Enter itself
    event.preventDefault();
    form.requestSubmit();
    return;
  }
  if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (form && form.dataset.kind === "ranking" && /^[0-9]$/.test(key) && rankNext(form, key)) {
    event.preventDefault();
    return;
  }
  const control = Array.from(document.querySelectorAll("[data-keys]"))
    .find((element) => element.dataset.keys.split(" ").includes(key));
  if (!control) return;
  event.preventDefault();
  if (control.type === "checkbox") control.checked = !control.checked;
  else if (control.type === "radio") control.checked = true;
  else control.click();
});

// One POST per page: a second Enter or click while the first is on its way does nothing
// (the server would store it once anyway, by its request_id).
document.addEventListener("submit", (event) => {
  if (event.target.dataset.sent) event.preventDefault();
  event.target.dataset.sent = "1";
});
window.addEventListener("pageshow", () => {  // a page come back from the history may post again
  document.querySelectorAll("form").forEach((form) => { delete form.dataset.sent; });
});
