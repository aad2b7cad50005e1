// The playground: a form over the server's HTTP API (README, "Serving"). It reads the schedulers and limits
// from GET /v1/info, posts the form to POST /v1/generate with "stream": true and reads the text/event-stream
// answer: `progress` events drive the progress bar, the `result` event becomes a player, a download link and
// a spectrogram per waveform. New kinds of input add their fields in requestBody; new kinds of event (streamed
// audio) add an entry to EVENT_HANDLERS.
"use strict";

// sessionStorage: the key lives as long as this tab, never beyond it.
const KEY_STORAGE = "audioldm-trt-api-key";
const NUMBER_FIELDS = ["duration", "steps", "guidance", "waveforms"];
const TEXT_FIELDS = ["negative_prompt", "scheduler"];
const AUDIO_FORMAT = "wav";

const element = (id) => document.getElementById(id);

/** A request refused: by the API (its status, its one-line message, Retry-After for a 429), or by the page
 * before sending (status 0). */
class RequestError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }

  static async of(response) {
    const text = await response.text();
    let message = text.trim() || response.statusText;
    try {
      message = JSON.parse(text).error ?? message;
    } catch {
      // not JSON (a proxy's page): its text is the message
    }
    return new RequestError(response.status, message, response.headers.get("Retry-After"));
  }
}

function authorization() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadInfo() {
  const response = await fetch("v1/info", { headers: authorization() });
  if (!response.ok) {
    const error = await RequestError.of(response);
    if (error.status === 401) {
      askForKey(sessionStorage.getItem(KEY_STORAGE) ? error.message : "");
      return;
    }
    throw error;
  }
  const info = await response.json();
  element("key-form").hidden = true;
  fillForm(info);
}

function askForKey(message) {
  element("key-form").hidden = false;
  element("key-error").textContent = message;
  element("fields").disabled = true;
  element("key").focus();
}

/** The server's schedulers, limits and defaults in the form. */
function fillForm(info) {
  const scheduler = element("scheduler");
  scheduler.length = 1; // keep "the checkpoint's"
  for (const name of info.schedulers) scheduler.add(new Option(name, name));
  const limits = info.limits;
  element("steps").max = limits.max_steps;
  element("waveforms").max = limits.max_waveforms;
  if (limits.max_duration !== null) element("duration").max = limits.max_duration;
  for (const name of ["steps", "guidance", "waveforms"]) {
    if (element(name).value === "") element(name).value = info.defaults[name];
  }
  element("fields").disabled = false;
}

/** The JSON body of the form, or a field error found before sending. Seeds go verbatim: they exceed the
 * integers a JavaScript number holds exactly (2**53). */
function requestBody() {
  const body = { prompt: element("prompt").value, format: AUDIO_FORMAT, stream: true };
  for (const name of TEXT_FIELDS) {
    if (element(name).value !== "") body[name] = element(name).value;
  }
  for (const name of NUMBER_FIELDS) {
    const input = element(name);
    if (input.validity.badInput) throw new RequestError(0, `${name}: not a number`);
    if (input.value !== "") body[name] = Number(input.value);
  }
  const json = JSON.stringify(body);
  if (element("random-seed").checked) return json;
  const seed = element("seed").value.trim();
  if (!/^-?\d+$/.test(seed)) throw new RequestError(0, "seed: a whole number, or tick random");
  return `${json.slice(0, -1)},"seed":${seed}}`;
}

/** The events of a text/event-stream answer, as {name, data}. */
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      yield { name, data: data.join("\n") };
    }
  }
}

/** The result event's JSON, its seed kept exact as a string. */
function parseResult(data) {
  const result = JSON.parse(data);
  result.seed = /"seed":\s*(-?\d+)/.exec(data)[1];
  return result;
}

const EVENT_HANDLERS = {
  progress: (data, run) => run.progress(JSON.parse(data)),
  result: (data, run) => run.result(parseResult(data)),
  error: (data) => {
    const error = JSON.parse(data);
    throw new RequestError(error.status, error.error);
  },
};

/** One generation on the page: its progress bar, then its result. */
class Run {
  constructor(prompt) {
    this.prompt = prompt;
    this.finished = false;
    element("progress-section").hidden = false;
    this.progress({ step: 0, steps: 1 });
    element("progress-text").textContent = "waiting for the server";
  }

  progress({ step, steps }) {
    const bar = element("progress");
    bar.max = steps;
    bar.value = step;
    element("progress-text").textContent = `step ${step} of ${steps}`;
  }

  result(result) {
    this.finished = true;
    element("progress-text").textContent = `done in ${result.timings.total.toFixed(2)} s`;
    element("results").prepend(generationView(this.prompt, result));
  }
}

function generationView(prompt, result) {
  const view = element("generation-template").content.firstElementChild.cloneNode(true);
  view.querySelector(".prompt").textContent = prompt;
  const count = result.audio.length;
  view.querySelector(".seed").textContent =
    `seed ${result.seed}` + (count > 1 ? ` (the same settings and seed give these ${count} waveforms)` : "");
  view.querySelector(".reuse-seed").addEventListener("click", () => {
    element("random-seed").checked = false;
    element("seed").disabled = false;
    element("seed").value = result.seed;
  });
  const timings = result.timings;
  view.querySelector(".timings").textContent =
    `queue ${seconds(timings.queue)} · UNet ${seconds(timings.unet)} · VAE decoder ${seconds(timings.vae_decoder)}` +
    ` · vocoder ${seconds(timings.vocoder)} · total ${seconds(timings.total)}`;
  result.audio.forEach((base64, index) => {
    view.querySelector(".waveforms").append(waveformView(base64, index, result));
  });
  return view;
}

function waveformView(base64, index, result) {
  const view = element("waveform-template").content.firstElementChild.cloneNode(true);
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: `audio/${AUDIO_FORMAT}` }));
  view.querySelector("audio").src = url;
  const link = view.querySelector(".download");
  link.href = url;
  link.download = `audioldm-${result.seed}-${index + 1}.${AUDIO_FORMAT}`;
  link.textContent = `download ${link.download}`;
  drawSpectrogram(view.querySelector("canvas"), bytes, result.sampling_rate).catch((error) => {
    view.querySelector("figcaption").append(` (no spectrogram: ${error.message})`);
  });
  return view;
}

const seconds = (value) => `${value.toFixed(3)} s`;

async function generate(event) {
  event.preventDefault();
  for (const slot of document.querySelectorAll(".error")) slot.textContent = "";
  const button = element("generate");
  button.disabled = true;
  try {
    const body = requestBody();
    const response = await fetch("v1/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authorization() },
      body,
    });
    if (!response.ok) throw await RequestError.of(response);
    const run = new Run(element("prompt").value);
    for await (const { name, data } of serverSentEvents(response)) EVENT_HANDLERS[name]?.(data, run);
    if (!run.finished) throw new RequestError(0, "the answer ended without a result");
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

/** The API's one-line message beside the field it names (`steps: ...`), else under the button. */
function showError(error) {
  element("progress-section").hidden = true;
  if (error.status === 401) {
    askForKey(error.message);
    return;
  }
  let message = error.message;
  if (error.status === 429 && error.retryAfter) message += `; retry in ${error.retryAfter} s`;
  const field = /^[a-z_]+/.exec(message)?.[0];
  const slot = field && document.querySelector(`[data-error-for="${field}"]`);
  (slot ?? element("form-error")).textContent = message;
}

// Spectrogram: the audio decoded by the browser at its own rate, short-time FFTs, magnitudes in dB.
const FFT_SIZE = 512;
const HOP = 128;
const DYNAMIC_RANGE_DB = 80;

async function drawSpectrogram(canvas, bytes, samplingRate) {
  // decodeAudioData takes (detaches) the buffer it is given: a copy.
  const audio = await new OfflineAudioContext(1, 1, samplingRate).decodeAudioData(bytes.slice().buffer);
  const samples = audio.getChannelData(0);
  const columns = Math.max(1, Math.floor((samples.length - FFT_SIZE) / HOP) + 1);
  const rows = FFT_SIZE / 2;
  const hann = Float64Array.from({ length: FFT_SIZE }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / FFT_SIZE));
  const decibels = new Float32Array(columns * rows);
  const re = new Float64Array(FFT_SIZE);
  const im = new Float64Array(FFT_SIZE);
  for (let column = 0; column < columns; column++) {
    for (let i = 0; i < FFT_SIZE; i++) re[i] = (samples[column * HOP + i] ?? 0) * hann[i];
    im.fill(0);
    fft(re, im);
    for (let row = 0; row < rows; row++) {
      decibels[column * rows + row] = 10 * Math.log10(re[row] ** 2 + im[row] ** 2 + 1e-12);
    }
  }
  const loudest = decibels.reduce((a, b) => Math.max(a, b), -Infinity);
  canvas.width = columns;
  canvas.height = rows;
  const context = canvas.getContext("2d");
  const image = context.createImageData(columns, rows);
  for (let column = 0; column < columns; column++) {
    for (let row = 0; row < rows; row++) {
      const level = Math.max(0, 1 + (decibels[column * rows + row] - loudest) / DYNAMIC_RANGE_DB);
      const pixel = ((rows - 1 - row) * columns + column) * 4; // low frequencies at the bottom
      image.data.set([...color(level), 255], pixel);
    }
  }
  context.putImageData(image, 0, 0);
}

/** In-place radix-2 FFT of (re, im), whose length is a power of two. */
function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let length = 2; length <= n; length <<= 1) {
    const angle = (-2 * Math.PI) / length;
    const [stepRe, stepIm] = [Math.cos(angle), Math.sin(angle)];
    for (let start = 0; start < n; start += length) {
      let [wRe, wIm] = [1, 0];
      for (let k = 0; k < length / 2; k++) {
        const a = start + k;
        const b = a + length / 2;
        const tRe = re[b] * wRe - im[b] * wIm;
        const tIm = re[b] * wIm + im[b] * wRe;
        re[b] = re[a] - tRe;
        im[b] = im[a] - tIm;
        re[a] += tRe;
        im[a] += tIm;
        [wRe, wIm] = [wRe * stepRe - wIm * stepIm, wRe * stepIm + wIm * stepRe];
      }
    }
  }
}

// Dark blue to purple to orange to pale yellow, for levels 0 to 1.
const PALETTE = [
  [0, 0, 16],
  [80, 18, 123],
  [183, 55, 121],
  [251, 136, 97],
  [252, 253, 191],
];

function color(level) {
  const position = level * (PALETTE.length - 1);
  const index = Math.min(PALETTE.length - 2, Math.floor(position));
  const t = position - index;
  return PALETTE[index].map((low, channel) => Math.round(low + (PALETTE[index + 1][channel] - low) * t));
}

element("random-seed").addEventListener("change", (event) => {
  element("seed").disabled = event.target.checked;
});
element("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, element("key").value.trim());
  loadInfo().catch(showError);
});
element("generate-form").addEventListener("submit", generate);
loadInfo().catch(showError);
