// The page: pick an image and settings, POST it, read the server-sent events as they come.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = null;       // {file: File} or {sample: "chelsea"}
let controller = null;   // aborts the running request (Stop, or leaving the page)
let info = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(text, fraction) {
  $("status").textContent = text;
  if (fraction !== undefined) $("progress").value = fraction;
}

function percent(value) { return `${Math.round(value * 100)} %`; }
function error(value) { return value === null ? "∞" : value.toFixed(3); }

function choose(choice, label) {
  chosen = choice;
  $("chosen").textContent = label;
  for (const button of $("samples").children) {
    button.classList.toggle("picked", choice.sample === button.dataset.sample);
  }
  showError("");
}

async function start() {
  const response = await fetch("/api/info");
  info = await response.json();
  $("model").textContent = `model ${info.model}`;
  for (const [name, title] of Object.entries(info.methods)) {
    $("method").add(new Option(title, name));
  }
  $("samples-n").max = info.max_samples;
  for (const label of info.labels) $("classes").append(new Option(label));
  for (const name of info.samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.sample = name;
    button.title = `bundled photo: ${name}`;
    button.innerHTML = `<img src="/api/samples/${name}" alt="${name}">`;
    button.addEventListener("click", () => choose({sample: name}, `bundled photo: ${name}`));
    $("samples").append(button);
  }
  $("noise").addEventListener("input", () => { $("noise-value").textContent = `${$("noise").value} %`; });
  $("file").addEventListener("change", () => {
    if ($("file").files.length) pickFile($("file").files[0]);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) pickFile(e.dataTransfer.files[0]);
  });
  $("run").addEventListener("click", run);
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  document.body.dataset.ready = "1";
}

function size(bytes) {
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MB`;
  return `${Math.round(bytes / 1024)} kB`;
}

function pickFile(file) {
  if (file.size > info.max_upload) {
    showError(`'${file.name}' is ${size(file.size)}; the limit is ${size(info.max_upload)}`);
    return;
  }
  choose({file}, `${file.name} (${size(file.size)})`);
}

function reset() {
  for (const id of ["input", "plain", "smoothed", "stderr"]) $(id).removeAttribute("src");
  $("smoothed").dataset.updates = "0";
  $("top5").innerHTML = "";
  $("explained").textContent = "";
  $("live").textContent = "";
  $("strip-maps").innerHTML = "";
  $("strip-box").hidden = true;
  $("downloads-box").hidden = true;
  $("downloads").innerHTML = "";
  $("progress").value = 0;
  document.body.dataset.state = "sending";  // "running" once the server has started the job
}

async function run() {
  if (!chosen) { showError("Drop an image or pick a bundled photo first."); return; }
  const samples = Number($("samples-n").value);
  if (!Number.isInteger(samples) || samples < 1 || samples > info.max_samples) {
    showError(`n must be a whole number from 1 to ${info.max_samples}`);
    return;
  }
  showError("");
  reset();
  const method = $("method").value;
  const params = new URLSearchParams({method, samples, noise: $("noise").value / 100,
                                      strip: $("strip").checked ? "1" : "0"});
  if ($("target").value.trim()) params.set("target", $("target").value.trim());
  if (chosen.sample) params.set("sample", chosen.sample);
  else params.set("filename", chosen.file.name);
  $("plain-title").textContent = info.methods[method];
  $("smoothed-title").textContent = `SmoothGrad + ${info.methods[method]}`;
  controller = new AbortController();
  $("run").disabled = true;
  $("stop").disabled = false;
  setStatus("Sending…", 0);
  try {
    const response = await fetch(`/api/explain?${params}`, {
      method: "POST", body: chosen.file || null, signal: controller.signal,
      headers: {"Content-Type": "application/octet-stream"}});
    if (!response.ok) {
      let message = `the server answered ${response.status}`;
      try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    await readEvents(response, samples);
  } catch (e) {
    if (e.name === "AbortError") { setStatus("Stopped."); document.body.dataset.state = "stopped"; }
    else { showError(e.message); setStatus("Failed."); document.body.dataset.state = "error"; }
  } finally {
    controller = null;
    $("run").disabled = false;
    $("stop").disabled = true;
  }
}

async function readEvents(response, samples) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) handle(JSON.parse(data), samples);
    }
  }
}

function handle(event, samples) {
  switch (event.type) {
    case "queued":
      setStatus(`Waiting: ${event.ahead} job${event.ahead === 1 ? "" : "s"} ahead of yours on the model…`);
      document.body.dataset.state = "waiting";
      break;
    case "started":
      setStatus("Started…");
      document.body.dataset.state = "running";
      break;
    case "input": $("input").src = event.image; break;
    case "top5":
      for (const c of event.classes) {
        const li = document.createElement("li");
        li.dataset.label = c.label;
        li.textContent = `${c.label} ${c.probability.toFixed(3)}`;
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = `${Math.max(1, Math.round(c.probability * 120))}px`;
        li.append(bar);
        $("top5").append(li);
      }
      break;
    case "plain": $("plain").src = event.image; setStatus("Smoothing…"); break;
    case "explained":  // every map explains this class (the prediction, or the one chosen)
      $("explained").textContent = `Explaining ${event.label}`;
      for (const li of $("top5").children) li.classList.toggle("explained", li.dataset.label === event.class);
      break;
    case "progress": {
      setStatus(`Smoothing: ${event.done} / ${event.total} samples`, event.done / event.total);
      const flips = event.flip_rate === null ? "" : ` · flip rate ${percent(event.flip_rate)}`;
      $("live").textContent = `n = ${event.done} · relative error ${error(event.relative_error)}${flips}`;
      if (event.image) {
        $("smoothed").src = event.image;
        $("smoothed").dataset.updates = String(Number($("smoothed").dataset.updates) + 1);
      }
      break;
    }
    case "stderr": $("stderr").src = event.image; break;
    case "strip": {
      $("strip-box").hidden = false;
      $("strip-n").textContent = event.samples;
      const figure = document.createElement("figure");
      if (Math.abs(event.noise * 100 - $("noise").value) < 0.5) figure.className = "current";
      figure.innerHTML = `<img alt="σ ${percent(event.noise)}" src="${event.image}"><figcaption>σ ${percent(event.noise)} · err ${error(event.relative_error)}</figcaption>`;
      $("strip-maps").append(figure);
      setStatus(`Strip over σ: ${$("strip-maps").children.length} maps`);
      break;
    }
    case "done": {
      setStatus(`Done in ${event.seconds.toFixed(1)} s (${samples} samples).`, 1);
      for (const name of event.files) {
        const link = document.createElement("a");
        link.href = `/api/results/${event.id}/${name}`;
        link.download = `smoothgrad-${name}`;
        link.textContent = name;
        $("downloads").append(link);
      }
      $("downloads-box").hidden = false;
      document.body.dataset.state = "done";
      break;
    }
    case "stopped": setStatus("Stopped."); document.body.dataset.state = "stopped"; break;
    case "error": throw new Error(event.message);
  }
}

start().catch((e) => showError(`cannot reach the server: ${e.message}`));
