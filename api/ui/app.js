// The console's shell: the API key for this tab, the views, and how an error
// from the API reaches the person (next to the field it names).

import { api, apiKey, setApiKey } from "./api.js";
import { clearErrors, showError } from "./dom.js";
import * as job from "./job.js";
import * as jobs from "./jobs.js";
import * as newJob from "./newjob.js";

const auth = document.getElementById("auth");
const keyInput = document.getElementById("api-key");
const authState = document.getElementById("auth-state");
const views = { new: "view-new", job: "view-job", jobs: "view-jobs" };
let current = null;

// An API error next to its field; a refused key next to the key.
function fail(error, root, fallback) {
  if (error.status === 401) {
    clearErrors(auth);
    showError(
      auth,
      { ...error, field: "Authorization", code: error.code, message: error.message },
      auth.querySelector(".field-error"),
    );
    authState.textContent = "";
    keyInput.focus();
    return;
  }
  showError(root, error, fallback);
}

function route() {
  const hash = location.hash.slice(1);
  const [name, value] = hash.split("=");
  if (name === "job" && value) return { view: "job", id: value };
  if (name === "reprompt" && value) return { view: "new", reprompt: value };
  if (name === "jobs") return { view: "jobs" };
  return { view: "new" };
}

async function show() {
  if (current) current.abort();
  current = new AbortController();
  const { signal } = current;
  const where = route();
  for (const [name, id] of Object.entries(views)) document.getElementById(id).hidden = name !== where.view;
  for (const link of document.querySelectorAll("nav a")) {
    const on = link.getAttribute("href") === `#${where.view}`;
    if (on) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `vor console: ${where.view === "job" ? where.id : where.view === "jobs" ? "jobs" : "new job"}`;
  if (where.view === "job") await job.show(where.id, signal);
  else if (where.view === "jobs") await jobs.show(signal);
  else await newJob.show(where, signal);
}

async function checkKey() {
  clearErrors(auth);
  try {
    await api("v1/jobs?limit=1");
    authState.textContent = apiKey() ? "key accepted, kept for this tab" : "this server needs no key";
    return true;
  } catch (exc) {
    fail(exc, auth, auth.querySelector(".field-error"));
    return false;
  }
}

function setup() {
  keyInput.value = apiKey();
  auth.addEventListener("submit", async (event) => {
    event.preventDefault();
    setApiKey(keyInput.value.trim());
    if (await checkKey()) show();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    setApiKey("");
    keyInput.value = "";
    checkKey();
  });
  newJob.setup(fail);
  job.setup(fail);
  jobs.setup(fail);
  window.addEventListener("hashchange", () => {
    show();
    document.getElementById("main").focus({ preventScroll: true });
  });
  checkKey();
  show();
}

setup();
