// The REST API, called with the tab's API key. Every failure becomes an ApiError
// that carries the API's own {code, message, field}.

const KEY_NAME = "vor.apiKey";
const BASE = new URL("../", document.baseURI);

export function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
}

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

function errorFrom(status, text, statusText) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  const error = body && body.error;
  if (error && error.message) return new ApiError(status, error.code, error.message, error.field);
  return new ApiError(status, `http_${status}`, text.slice(0, 300) || statusText || "no answer", null);
}

export async function api(path, { method = "GET", json, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(new URL(path, BASE), init);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, "network", `the API did not answer (${exc.message})`, null);
  }
  const text = await response.text();
  if (!response.ok) throw errorFrom(response.status, text, response.statusText);
  return text ? JSON.parse(text) : null;
}

// Multipart upload with progress (fetch cannot report upload progress).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", new URL(path, BASE));
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText));
      else reject(errorFrom(xhr.status, xhr.responseText, xhr.statusText));
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "the upload did not reach the API", null));
    xhr.send(form);
  });
}

// Server-sent events read with fetch(), so the Authorization header goes along
// (EventSource cannot send one). Resolves when the server ends the stream.
export async function stream(path, onEvent, signal) {
  let response;
  try {
    response = await fetch(new URL(path, BASE), {
      headers: headers({ Accept: "text/event-stream" }),
      signal,
      cache: "no-store",
    });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, "network", `the event stream did not open (${exc.message})`, null);
  }
  if (!response.ok) throw errorFrom(response.status, await response.text(), response.statusText);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// Follow a stream, opening it again after a break (not after an error the API
// answered, nor after the server ended it when `once` is set).
export async function follow(path, onEvent, signal, { once = false, onState } = {}) {
  let delay = 500;
  while (!signal.aborted) {
    try {
      onState && onState("live");
      await stream(path, onEvent, signal);
      delay = 500;
      if (once) return;
    } catch (exc) {
      if (exc.name === "AbortError" || signal.aborted) return;
      if (exc instanceof ApiError && exc.status >= 400 && exc.status < 500) throw exc;
      onState && onState(`reconnecting: ${exc.message}`);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}
