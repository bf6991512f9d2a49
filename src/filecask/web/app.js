// filecask's web page: sign in, upload, list, delete and bundle files, using the same
// HTTP API as curl (see /docs). A plain ES module: no build step, no framework.
//
// Signing in: the user name and password are checked with GET /me and then kept, as the
// Basic token, in sessionStorage (gone when the tab closes; "Sign out" forgets them at
// once). Every request sends them explicitly. fetch() runs with credentials "omit", so a
// 401 never brings up the browser's own Basic prompt: the page shows its sign-in form.

const TOKEN_KEY = "filecask.basic";
const USER_KEY = "filecask.user";
const PAGE_SIZE = 50;

const $ = (selector) => document.querySelector(selector);

let token = sessionStorage.getItem(TOKEN_KEY);
let nextCursor = null;
const selected = new Map(); // hash -> file name, for the ZIP bundle

// ------------------------------------------------------------------ the API

/** The Basic token of "user:password", UTF-8 (RFC 7617 charset="UTF-8"). */
function basicToken(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  return btoa(String.fromCharCode(...bytes));
}

class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { title: response.statusText || `HTTP ${response.status}` };
  }
}

/** A JSON request to this server, signed in; a 401 signs the page out. */
async function api(path, { method = "GET", json, auth = token } = {}) {
  const headers = { Accept: "application/json", Authorization: `Basic ${auth}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, {
    method, headers, body, credentials: "omit", cache: "no-store",
  });
  if (!response.ok) {
    const error = new ApiError(
      response.status, await problemOf(response), response.headers.get("Retry-After"));
    if (response.status === 401 && auth === token) signOut("Please sign in again.");
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

// ------------------------------------------------------------------ signing in

async function signIn(event) {
  event.preventDefault();
  const form = event.target;
  const user = form.user.value.trim();
  const password = form.password.value;
  const message = $("#sign-in-error");
  message.hidden = true;
  if (!user || !password) {
    showError(message, "Enter your user name and password.");
    return;
  }
  const candidate = basicToken(user, password);
  form.querySelector("button").disabled = true;
  try {
    const me = await api("/me", { auth: candidate });
    token = candidate;
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(USER_KEY, me.name);
    form.reset();
    await showApp(me);
  } catch (error) {
    showError(message, signInTrouble(error));
  } finally {
    form.querySelector("button").disabled = false;
  }
}

function signInTrouble(error) {
  if (!(error instanceof ApiError)) return `Cannot reach the server: ${error.message}`;
  if (error.status === 401) return "Wrong user name or password.";
  if (error.status === 429) {
    return `Too many failed sign-ins. Try again in ${error.retryAfter || "a few"} seconds.`;
  }
  return error.message;
}

function signOut(reason) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  selected.clear();
  $("#app-view").hidden = true;
  $("#who").hidden = true;
  $("#sign-in-view").hidden = false;
  const message = $("#sign-in-error");
  if (reason) showError(message, reason);
  else message.hidden = true;
  $("#sign-in").user.focus();
}

async function showApp(me) {
  $("#user-name").textContent = me.name;
  $("#who").hidden = false;
  $("#sign-in-view").hidden = true;
  $("#app-view").hidden = false;
  showUsage(me);
  await Promise.all([loadFiles(), loadBundles()]);
}

// ------------------------------------------------------------------ usage

/** `bytes` is what the user keeps alive: their files' contents and their ZIP links'
 * (each content once), and `reserved` what unfinished uploads hold back; both count. */
function showUsage(me) {
  const counts = [plural(me.files, "file")];
  if (me.bundles) counts.push(plural(me.bundles, "ZIP link"));
  const held = counts.join(", ");
  const used = me.bytes + me.reserved;
  const notes = [];
  if (me.reserved) notes.push(`${formatSize(me.reserved)} of it is reserved by unfinished uploads.`);
  if (me.bundles) {
    notes.push("Your ZIP links keep their files stored, and counted here, even after you delete the files.");
  }
  const bar = $("#usage-bar");
  if (me.quota === null) {
    $("#usage-text").textContent = [`${held}, ${formatSize(used)} used (no quota).`, ...notes].join(" ");
    bar.hidden = true;
  } else {
    const percent = me.quota ? Math.min(100, Math.round((100 * used) / me.quota)) : 100;
    $("#usage-text").textContent = [
      `${held}, ${formatSize(used)} of your ${formatSize(me.quota)} quota used (${percent}%).`,
      ...notes,
    ].join(" ");
    bar.max = Math.max(me.quota, 1);
    bar.value = Math.min(used, bar.max);
    bar.hidden = false;
  }
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

async function refreshUsage() {
  try {
    showUsage(await api("/me"));
  } catch (error) {
    if (error.status !== 401) toast(`Could not read your usage: ${error.message}`);
  }
}

// ------------------------------------------------------------------ uploads

/**
 * Send one file; resolve with `{hash, size}` of the stored file, reject with an ApiError.
 * Small files go whole (`POST /files`, XHR for its progress events); large ones through
 * the resumable tus endpoint, so a cut connection, a proxy that caps request bodies or a
 * reload of the page loses at most one chunk.
 */
function uploadFile(file, onProgress) {
  return file.size >= tunable("tusThreshold", TUS_THRESHOLD)
    ? uploadResumable(file, onProgress)
    : uploadWhole(file, onProgress);
}

const TUS_THRESHOLD = 32 * 1024 * 1024;
const TUS_CHUNK = 8 * 1024 * 1024; // well below the 100 MB many proxies allow per request
const TUS_RETRIES = 5;

/** A size the page uses, overridable in sessionStorage (`filecask.tusThreshold`, ...). */
function tunable(name, fallback) {
  const value = Number(sessionStorage.getItem(`filecask.${name}`));
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

function uploadWhole(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/files?name=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader("Authorization", `Basic ${token}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.responseType = "json";
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onload = () => {
      if (xhr.status === 200 || xhr.status === 201) resolve(xhr.response);
      else {
        const problem = xhr.response || { title: `HTTP ${xhr.status}` };
        reject(new ApiError(xhr.status, problem, xhr.getResponseHeader("Retry-After")));
      }
    };
    xhr.onerror = () => reject(new Error("the connection failed"));
    xhr.onabort = () => reject(new Error("cancelled"));
    xhr.send(file);
  });
}

/** tus 1.0: create (or find again, after a reload) the upload, then PATCH it chunk by chunk;
 * after a failed chunk, ask the server where it stands (HEAD) and go on from there. */
async function uploadResumable(file, onProgress) {
  const key = `filecask.tus:${file.name}:${file.size}:${file.lastModified}`;
  let url = localStorage.getItem(key);
  let offset = url ? await tusOffset(url) : null;
  if (offset === null) {
    url = await tusCreate(file);
    localStorage.setItem(key, url);
    offset = 0;
  }
  const chunk = tunable("tusChunk", TUS_CHUNK);
  let failures = 0;
  for (;;) {
    onProgress(offset, file.size);
    let response;
    try {
      response = await fetch(url, {
        method: "PATCH",
        headers: tusHeaders({
          "Upload-Offset": String(offset),
          "Content-Type": "application/offset+octet-stream",
        }),
        body: file.slice(offset, offset + chunk),
        credentials: "omit",
      });
    } catch (error) {
      response = null; // the connection failed: find out what arrived
    }
    if (response && response.status === 204) {
      failures = 0;
      offset = Number(response.headers.get("Upload-Offset"));
      const hash = response.headers.get("Filecask-Hash");
      if (hash) {
        localStorage.removeItem(key);
        onProgress(file.size, file.size);
        return { hash, size: file.size };
      }
      continue;
    }
    if (response && response.status < 500 && response.status !== 409 && response.status !== 423) {
      localStorage.removeItem(key);
      const problem = await problemOf(response);
      // Give its reservation back at once rather than at its expiry (best effort).
      fetch(url, { method: "DELETE", headers: tusHeaders({}), credentials: "omit" }).catch(() => {});
      throw new ApiError(response.status, problem, null);
    }
    failures += 1;
    if (failures > TUS_RETRIES) throw new Error("the connection keeps failing; try again later");
    await new Promise((done) => setTimeout(done, 250 * 2 ** failures));
    const now = await tusOffset(url);
    if (now === null) throw new Error("the server no longer has this upload; start it again");
    offset = now;
  }
}

function tusHeaders(extra) {
  return { "Tus-Resumable": "1.0.0", Authorization: `Basic ${token}`, ...extra };
}

async function tusCreate(file) {
  const name = btoa(String.fromCharCode(...new TextEncoder().encode(file.name)));
  const response = await fetch("/uploads/", {
    method: "POST",
    headers: tusHeaders({ "Upload-Length": String(file.size), "Upload-Metadata": `filename ${name}` }),
    credentials: "omit",
  });
  if (response.status !== 201) {
    throw new ApiError(response.status, await problemOf(response), response.headers.get("Retry-After"));
  }
  return response.headers.get("Location");
}

/** Where the server stands on an upload; null if it is gone (expired, deleted, not ours). */
async function tusOffset(url) {
  try {
    const response = await fetch(url, { method: "HEAD", headers: tusHeaders({}), credentials: "omit", cache: "no-store" });
    return response.ok ? Number(response.headers.get("Upload-Offset")) : null;
  } catch {
    return null;
  }
}

async function uploadAll(fileList) {
  const chosen = [...fileList];
  if (!chosen.length) return;
  const rows = chosen.map((file) => {
    const row = element("li", {}, [
      element("span", { className: "name", textContent: file.name }),
      element("span", { className: "status", textContent: formatSize(file.size) }),
      element("progress", { max: Math.max(file.size, 1), value: 0 }),
    ]);
    $("#uploads").prepend(row);
    return row;
  });
  // One at a time: the disk writes each file once anyway, and progress stays readable.
  for (const [index, file] of chosen.entries()) {
    const row = rows[index];
    const bar = row.querySelector("progress");
    const status = row.querySelector(".status");
    try {
      const info = await uploadFile(file, (sent, total) => {
        bar.max = Math.max(total, 1);
        bar.value = sent;
        status.textContent = `${Math.floor((100 * sent) / Math.max(total, 1))}%`;
      });
      bar.value = bar.max;
      row.classList.add("done");
      status.textContent = `Uploaded, ${formatSize(info.size)}`;
    } catch (error) {
      row.classList.add("failed");
      bar.remove();
      status.textContent = `Failed: ${error.message}`;
      if (error.status === 401) {
        signOut("Please sign in again.");
        return;
      }
    }
  }
  await Promise.all([loadFiles(), refreshUsage()]);
}

function setUpDropZone() {
  const zone = $("#drop-zone");
  const input = $("#file-input");
  input.addEventListener("change", () => {
    uploadAll(input.files).finally(() => { input.value = ""; });
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer && event.dataTransfer.files.length) uploadAll(event.dataTransfer.files);
  });
  // A file dropped beside the zone must not make the browser leave the page to show it.
  for (const name of ["dragover", "drop"]) {
    window.addEventListener(name, (event) => event.preventDefault());
  }
}

// ------------------------------------------------------------------ the list

async function loadFiles({ more = false } = {}) {
  const list = $("#file-list");
  const problem = $("#list-error");
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (more && nextCursor) query.set("cursor", nextCursor);
  let page;
  try {
    page = await api(`/files?${query}`);
  } catch (error) {
    if (error.status !== 401) showError(problem, `Could not list your files: ${error.message}`);
    return;
  }
  problem.hidden = true;
  if (!more) {
    list.replaceChildren();
    // Keep only selections that are still on the first page's files, or may be later on.
    const present = new Set(page.files.map((file) => file.hash));
    if (!page.next_cursor) {
      for (const hash of [...selected.keys()]) if (!present.has(hash)) selected.delete(hash);
    }
  }
  for (const file of page.files) list.append(fileRow(file));
  nextCursor = page.next_cursor;
  $("#more").hidden = !nextCursor;
  $("#no-files").hidden = list.children.length > 0;
  updateSelection();
}

function downloadUrl(file) {
  return `${file.url}?name=${encodeURIComponent(file.name)}`;
}

function fileRow(file) {
  const box = element("input", {
    type: "checkbox", checked: selected.has(file.hash), title: "Include in a ZIP link",
  });
  box.setAttribute("aria-label", `Select ${file.name}`);
  box.addEventListener("change", () => {
    if (box.checked) selected.set(file.hash, file.name);
    else selected.delete(file.hash);
    updateSelection();
  });
  const link = element("a", {
    className: "name", href: downloadUrl(file), textContent: file.name, target: "_blank",
    rel: "noopener",
  });
  const when = new Date(file.uploaded_at);
  const meta = element("div", { className: "meta" }, [
    `${formatSize(file.size)} · `,
    element("time", { dateTime: file.uploaded_at, textContent: when.toLocaleString() }),
  ]);
  const copy = element("button", { type: "button", className: "quiet", textContent: "Copy link" });
  copy.addEventListener("click", () => copyText(new URL(downloadUrl(file), location.href).href));
  const remove = element("button", { type: "button", className: "danger", textContent: "Delete" });
  remove.addEventListener("click", () => deleteFile(file, row));
  const row = element("li", {}, [
    box,
    element("div", { className: "name" }, [link, meta]),
    element("div", { className: "actions" }, [copy, remove]),
  ]);
  row.dataset.hash = file.hash;
  return row;
}

async function deleteFile(file, row) {
  // Which of the user's ZIP links name this content: they keep it stored (and counted).
  let holders = null;
  try {
    holders = (await api(`/archives?hash=${file.hash}`)).archives;
  } catch (error) {
    if (error.status === 401) return;
  }
  if (!window.confirm(deleteQuestion(file, holders))) return;
  let answer;
  try {
    answer = await api(`/files/${file.hash}`, { method: "DELETE" });
  } catch (error) {
    if (error.status !== 401) toast(`Could not delete ${file.name}: ${error.message}`);
    return;
  }
  row.remove();
  selected.delete(file.hash);
  updateSelection();
  $("#no-files").hidden = $("#file-list").children.length > 0;
  const kept = answer && answer.held_by_bundles ? answer.held_by_bundles : [];
  if (kept.length) {
    toast(`Deleted ${file.name}. Its content stays stored, and counted in your usage, ` +
      `while your ${kept.length === 1 ? "ZIP link" : "ZIP links"} ${quoted(kept)} ` +
      `${kept.length === 1 ? "holds" : "hold"} it.`);
  } else {
    toast(`Deleted ${file.name}.`);
  }
  await refreshUsage();
}

/** The truth about a delete: a ZIP link of the user's that names the content keeps it
 * stored, downloadable and counted; otherwise its link stops working unless another user
 * stored the same content. `holders`: those ZIP links, or null if they could not be read. */
function deleteQuestion(file, holders) {
  const question = `Delete "${file.name}"?`;
  if (holders === null) {
    return `${question} If one of your ZIP links includes it, its content stays stored, ` +
      "counted in your usage and downloadable until you delete that ZIP link; otherwise " +
      "its link stops working, unless someone else stored the same content.";
  }
  if (!holders.length) {
    return `${question} Its link stops working, unless someone else stored the same content.`;
  }
  const one = holders.length === 1;
  return `${question} Your ${one ? "ZIP link" : "ZIP links"} ${quoted(holders)} still ` +
    `${one ? "includes" : "include"} it: its content stays stored, counted in your usage ` +
    `and downloadable (its link too) until you delete ${one ? "that ZIP link" : "them"} ` +
    "below.";
}

function quoted(bundles) {
  return bundles.map((bundle) => `"${bundle.name}"`).join(", ");
}

// ------------------------------------------------------------------ ZIP bundles

function updateSelection() {
  $("#selected-count").textContent = String(selected.size);
  $("#make-bundle").disabled = selected.size === 0;
}

const WINDOWS_CHARACTERS = /[<>:"|?*\\]/g;
const DEVICE_NAME = /^(con|prn|aux|nul|conin\$|conout\$|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3]) *(\.|$)/i;

/** What Windows' best-fit conversion turns into a separator or a Windows character (the
 * server's names.py keeps the same list); NFKC look-alikes (fullwidth forms) are found by
 * normalising. */
const BEST_FIT = /[\u2044\u2215\u2571\u29f8\u00a5\u20a9\u2216\u2572\u29f5\u29f9\u0589\u05c3\u2236\ua789\u02ba\u02ee\u01c0\u2223\u2217]/;
const SEPARATING = /[<>:"|?*\\/]/;

/** Whether `c` (one character) reads as a separator or a Windows character elsewhere. */
function readsAsSeparator(c) {
  return c > "\x7f" && (BEST_FIT.test(c) || SEPARATING.test(c.normalize("NFKC")));
}

/** A file name as a ZIP entry the server accepts (the rules of the README's "Names and
 * archives"): no ':' or other character Windows refuses, nor one that reads as such after
 * NFKC or best-fit conversion ("a／b"), no trailing dot or space (nor "…"), no device name
 * ("CON.txt" becomes "_CON.txt", so does "ｃｏｎ.txt"). */
function entryName(name) {
  let safe = [...name].map((c) => (readsAsSeparator(c) ? "_" : c)).join("");
  safe = safe.replace(WINDOWS_CHARACTERS, "_");
  const skeleton = safe.normalize("NFKD").replace(/\p{Mn}/gu, "").normalize("NFKC");
  if (DEVICE_NAME.test(safe) || DEVICE_NAME.test(skeleton)) safe = `_${safe}`;
  const chars = [...safe];
  let end = chars.length;
  while (end > 0 && /[. ]$/.test(chars[end - 1].normalize("NFKC"))) end -= 1;
  return (end === chars.length ? safe : `${chars.slice(0, end).join("")}_`) || "_";
}

/** How the server compares entries: case and Unicode forms ignored (near enough to its
 * NFD + case-fold + NFC; it has the last word). */
function entryKey(name) {
  return name.normalize("NFD").toUpperCase().toLowerCase().normalize("NFC");
}

/** Entry paths for the ZIP: the files' names, made safe and unique even where case and
 * Unicode forms are ignored ("a.txt", "A (2).TXT"). */
function bundlePaths(names) {
  const taken = new Set();
  return names.map((original) => {
    const name = entryName(original);
    let candidate = name;
    const dot = name.lastIndexOf(".");
    const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
    for (let n = 2; taken.has(entryKey(candidate)); n += 1) candidate = `${stem} (${n})${ext}`;
    taken.add(entryKey(candidate));
    return candidate;
  });
}

async function makeBundle(event) {
  event.preventDefault();
  const name = $("#bundle-name").value.trim() || "files.zip";
  const hashes = [...selected.keys()];
  const paths = bundlePaths(hashes.map((hash) => selected.get(hash)));
  const files = hashes.map((hash, index) => ({ hash, path: paths[index] }));
  const button = $("#make-bundle");
  button.disabled = true;
  try {
    const bundle = await api("/archives", { method: "POST", json: { name, files } });
    const link = $("#bundle-link");
    link.href = bundle.url;
    link.textContent = bundle.url;
    $("#bundle-result").hidden = false;
    await Promise.all([loadBundles(), refreshUsage()]);
  } catch (error) {
    if (error.status !== 401) toast(`Could not make the ZIP link: ${error.message}`);
  } finally {
    updateSelection();
  }
}

/** The user's ZIP links, each with its link and a Delete button: deleting one lets go
 * of the contents only it kept (files deleted since), in the store and in the usage. */
async function loadBundles() {
  const list = $("#bundle-list");
  let listed;
  try {
    listed = (await api("/archives")).archives;
  } catch (error) {
    if (error.status !== 401) toast(`Could not list your ZIP links: ${error.message}`);
    return;
  }
  list.replaceChildren(...listed.map(bundleRow));
  $("#no-bundles").hidden = listed.length > 0;
}

function bundleRow(bundle) {
  const link = element("a", {
    className: "name", href: bundle.url, textContent: bundle.name, target: "_blank", rel: "noopener",
  });
  const when = new Date(bundle.created_at);
  const meta = element("div", { className: "meta" }, [
    `${plural(bundle.files, "file")}, ${formatSize(bundle.bytes)} · `,
    element("time", { dateTime: bundle.created_at, textContent: when.toLocaleString() }),
  ]);
  const copy = element("button", { type: "button", className: "quiet", textContent: "Copy link" });
  copy.addEventListener("click", () => copyText(bundle.url));
  const remove = element("button", { type: "button", className: "danger", textContent: "Delete" });
  remove.addEventListener("click", () => deleteBundle(bundle, row));
  const row = element("li", {}, [
    element("div", { className: "name" }, [link, meta]),
    element("div", { className: "actions" }, [copy, remove]),
  ]);
  row.dataset.id = bundle.id;
  return row;
}

async function deleteBundle(bundle, row) {
  const question = `Delete the ZIP link "${bundle.name}"? The link stops working; files ` +
    "you deleted that only it kept leave the store and your usage. Your files stay.";
  if (!window.confirm(question)) return;
  try {
    await api(`/archives/${bundle.id}`, { method: "DELETE" });
  } catch (error) {
    if (error.status !== 401) toast(`Could not delete ${bundle.name}: ${error.message}`);
    return;
  }
  row.remove();
  $("#no-bundles").hidden = $("#bundle-list").children.length > 0;
  toast(`Deleted the ZIP link ${bundle.name}.`);
  await refreshUsage();
}

// ------------------------------------------------------------------ helpers

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

function showError(node, text) {
  node.textContent = text;
  node.hidden = false;
}

let toastTimer;
function toast(text) {
  const node = $("#toast");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, 4000);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Link copied.");
  } catch {
    // No clipboard (a plain-http page on another host is not a secure context).
    window.prompt("Copy this link:", text);
  }
}

const UNITS = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
function formatSize(bytes) {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${bytes} byte${bytes === 1 ? "" : "s"}`;
  return `${value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

// ------------------------------------------------------------------ start

async function start() {
  $("#sign-in").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut());
  $("#bundle").addEventListener("submit", makeBundle);
  $("#bundle-copy").addEventListener("click", () => copyText($("#bundle-link").href));
  $("#more").addEventListener("click", () => loadFiles({ more: true }));
  setUpDropZone();
  if (!token) {
    signOut();
    return;
  }
  try {
    await showApp(await api("/me"));
  } catch (error) {
    if (error.status !== 401) signOut(signInTrouble(error));
  }
}

start();
