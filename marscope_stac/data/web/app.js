// MarScope-STAC web map: ask the planet, see the answer, label it, refine it with examples.
import * as maplibregl from "./vendor/maplibre-gl.mjs";

const $ = (id) => document.getElementById(id);
const state = {
  config: null,
  current: null,
  examples: [], // {lon, lat, negative, marker, thumb}
  products: [],
  answer: [], // ids of the last answer's products
  controller: null, // AbortController of the query running
  restoring: false,
};

const protocol = new pmtiles.Protocol();
maplibregl.addProtocol("pmtiles", protocol.tile);

function absolute(url) {
  return new URL(url, window.location.href).href;
}

// a tile URL template made absolute, its {z}/{x}/{y} kept as they are (URL() escapes braces)
const absoluteTemplate = (url) => absolute(url).replace(/%7B([xyz])%7D/g, "{$1}");

async function getJSON(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error("the server does not answer; is `marscope serve` still running?");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    throw new Error(`the server answered ${response.status} without a message`);
  }
  if (!response.ok) throw new Error((body && body.error) || response.statusText);
  return body;
}

async function loadConfig() {
  // a static site (marscope serve --static) has its configuration in a file
  if (document.documentElement.dataset.static) return await getJSON("config.json");
  return await getJSON("api/config");
}

// ---------------------------------------------------------------- probability below a cut-off

// Probability tiles are palette PNGs (index = round(p * 250), 255 = no data). Tiles reach the
// map through the "cut" protocol, which clears the palette entries below the cut-off in the
// tRNS chunk: near-zero probability leaves the imagery visible, no pixel is decoded.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function cutPalette(png, cut) {
  const data = new Uint8Array(png);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const below = Math.round(cut * 250);
  for (let at = 8; at + 12 <= data.length; ) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...data.subarray(at + 4, at + 8));
    if (type === "tRNS") {
      for (let i = 0; i < Math.min(length, below); i++) data[at + 8 + i] = 0;
      view.setUint32(at + 8 + length, crc32(data.subarray(at + 4, at + 8 + length)));
      break;
    }
    if (type === "IDAT") break;
    at += 12 + length;
  }
  return data.buffer;
}

maplibregl.addProtocol("cut", async (params, abort) => {
  const [, cut, rest] = params.url.match(/^cut:\/\/([0-9.]+)\/(.*)$/);
  const inner = { ...params, url: `pmtiles://${rest}` };
  const answer = await protocol.tile(inner, abort);
  if (params.type === "json") {
    const tilejson = answer.data;
    tilejson.tiles = tilejson.tiles.map((t) => `cut://${cut}/${t.replace(/^pmtiles:\/\//, "")}`);
    return { data: tilejson };
  }
  return { data: answer.data ? cutPalette(answer.data, Number(cut)) : answer.data };
});

// an answer's tiles straight from the server (its files are still being written): the same
// PNGs as its PMTiles archive will hold, cut at the same value
maplibregl.addProtocol("cutlive", async (params, abort) => {
  const [, cut, rest] = params.url.match(/^cutlive:\/\/([0-9.]+)\/(.*)$/);
  const response = await fetch(rest, { signal: abort.signal });
  if (response.status === 204) return { data: null };
  if (!response.ok) throw new Error(`${response.status} ${rest}`);
  return { data: cutPalette(await response.arrayBuffer(), Number(cut)) };
});

// ---------------------------------------------------------------- scale on the body's radius

class BodyScale {
  constructor(radius) {
    this.radius = radius;
  }
  onAdd(map) {
    this.map = map;
    this.el = document.createElement("div");
    this.el.className = "maplibregl-ctrl scale-bar";
    this.update = () => this.render();
    map.on("move", this.update);
    this.render();
    return this.el;
  }
  onRemove() {
    this.map.off("move", this.update);
    this.el.remove();
  }
  render() {
    // metres per CSS pixel at the centre: the body's circumference over the world's width
    const lat = this.map.getCenter().lat;
    const worldPx = 512 * Math.pow(2, this.map.getZoom());
    const mPerPx = (2 * Math.PI * this.radius * Math.cos((lat * Math.PI) / 180)) / worldPx;
    const target = mPerPx * 100;
    const pow = Math.pow(10, Math.floor(Math.log10(target)));
    const nice = [1, 2, 5, 10].map((f) => f * pow).filter((v) => v <= target).pop();
    this.el.style.width = `${Math.round(nice / mPerPx)}px`;
    this.el.textContent = nice >= 1000 ? `${nice / 1000} km` : `${nice} m`;
    this.el.dataset.metresPerPixel = String(mPerPx);
  }
}

// ---------------------------------------------------------------- layers of a product

const LAYERS = {
  imagery: ["imagery"],
  probability: ["probability"],
  detections: ["detections-fill", "detections-line"],
};

function applyVisibility(map) {
  for (const [name, ids] of Object.entries(LAYERS)) {
    const visible = $(`layer-${name}`).checked ? "visible" : "none";
    for (const id of ids) if (map.getLayer(id)) map.setLayoutProperty(id, "visibility", visible);
  }
  const shown = $("layer-examples").checked;
  for (const ex of state.examples) ex.marker.getElement().style.display = shown ? "" : "none";
}

function removeProduct(map) {
  for (const id of ["detections-line", "detections-fill", "probability"]) {
    if (map.getLayer(id)) map.removeLayer(id);
  }
  for (const id of ["detections", "probability"]) {
    if (map.getSource(id)) map.removeSource(id);
  }
}

function probabilityUrl(product) {
  if (product.live) return `cutlive://${Number($("cutoff").value)}/${absoluteTemplate(product.tiles.probability)}`;
  const url = absolute(product.assets.tiles).replace(/^[a-z]+:\/\//, "");
  const scheme = window.location.protocol.replace(":", "");
  // class maps are categorical: no cut-off
  if (product.legend && product.legend.length) return `pmtiles://${scheme}://${url}`;
  return `cut://${Number($("cutoff").value)}/${scheme}://${url}`;
}

function addProbability(map, product) {
  if (map.getLayer("probability")) map.removeLayer("probability");
  if (map.getSource("probability")) map.removeSource("probability");
  const source = product.live
    ? { type: "raster", tiles: [probabilityUrl(product)], tileSize: 256, bounds: product.bbox,
        minzoom: product.tiles.probability_zoom[0], maxzoom: product.tiles.probability_zoom[1] }
    : { type: "raster", url: probabilityUrl(product), tileSize: 256 };
  map.addSource("probability", source);
  const before = map.getLayer("detections-fill") ? "detections-fill" : undefined;
  map.addLayer(
    {
      id: "probability",
      type: "raster",
      source: "probability",
      paint: { "raster-opacity": Number($("opacity").value), "raster-resampling": "nearest" },
    },
    before,
  );
}

function detectionFilter() {
  return [">=", ["get", "max_probability"], Number($("filter").value)];
}

function showProduct(map, product, { fit = true, restore = true } = {}) {
  removeProduct(map);
  state.current = product;
  const assets = product.assets;
  const hasTiles = (p) => Boolean(p.assets.tiles || (p.live && p.tiles.probability));
  if (hasTiles(product)) addProbability(map, product);
  const live = product.live && product.tiles.detections;
  if (assets["detection-tiles"] || live) {
    map.addSource("detections", live
      ? { type: "vector", tiles: [absoluteTemplate(product.tiles.detections)], bounds: product.bbox,
          minzoom: product.tiles.detections_zoom[0], maxzoom: product.tiles.detections_zoom[1] }
      : { type: "vector", url: `pmtiles://${absolute(assets["detection-tiles"])}` });
    for (const [id, type, paint] of [
      ["detections-fill", "fill", { "fill-color": "#00e5ff", "fill-opacity": 0.12 }],
      ["detections-line", "line", { "line-color": "#00e5ff", "line-width": 1.5 }],
    ]) {
      map.addLayer({ id, type, source: "detections", "source-layer": "detections", filter: detectionFilter(), paint });
    }
  }
  applyVisibility(map);
  renderLegend(product);
  if (fit && product.bbox) map.fitBounds([[product.bbox[0], product.bbox[1]], [product.bbox[2], product.bbox[3]]], { padding: 20, duration: 0 });
  if (restore && !state.config.static) restoreQuery(map, product);
  renderDownloads(map);
  renderProducts();
  document.body.dataset.product = product.id;
  saveUrl(map);
}

function renderLegend(product) {
  const legend = $("class-legend");
  legend.innerHTML = "";
  for (const entry of product.legend || []) {
    const row = document.createElement("div");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = entry.colour; // a style value, never markup
    row.append(swatch, document.createTextNode(entry.name));
    legend.appendChild(row);
  }
  $("legend").hidden = Boolean(product.legend && product.legend.length);
}

function visibleBox(map) {
  const b = map.getBounds();
  return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => v.toFixed(5)).join(",");
}

function renderDownloads(map) {
  const product = state.current;
  const box = $("downloads");
  box.innerHTML = "";
  if (!product) return;
  const links = [
    ["STAC item", product.item],
    ["COG", product.assets.probability],
    ["PMTiles", product.assets.tiles],
    ["detections GeoParquet", product.assets.detections],
    ["scores GeoParquet", product.assets.scores],
  ];
  if (!state.config.static && product.assets.detections) {
    const base = `api/products/${encodeURIComponent(product.id)}/detections`;
    links.push(["detections GeoJSON", `${base}.geojson`], ["detections CSV", `${base}.csv`]);
    links.push(["visible detections (GeoJSON)", `${base}.geojson?bbox=${visibleBox(map)}`]);
    links.push(["visible detections (CSV)", `${base}.csv?bbox=${visibleBox(map)}`]);
  }
  for (const [label, url] of links) {
    if (!url) continue;
    const a = document.createElement("a");
    a.href = url;
    a.textContent = label;
    a.download = "";
    box.appendChild(a);
  }
}

// ---------------------------------------------------------------- the products list

function exampleCount(product) {
  const q = (product.stac && product.stac.properties && product.stac.properties["marscope:query"]) || {};
  return ["points", "negatives_points", "cells", "negative_cells"].reduce((n, key) => n + (q[key] || []).length, 0);
}

function renderProducts() {
  const list = $("queries");
  list.innerHTML = "";
  const wanted = $("product-filter").value.trim().toLowerCase();
  for (const product of state.products) {
    const name = (product.texts || []).join(", ") || product.id;
    if (wanted && !name.toLowerCase().includes(wanted)) continue;
    const li = document.createElement("li");
    li.dataset.id = product.id;
    li.className = [
      state.current && state.current.id === product.id ? "current" : "",
      state.answer.includes(product.id) ? "answer" : "",
    ].join(" ");
    const title = document.createElement("span");
    title.className = "name";
    title.textContent = name;
    const meta = document.createElement("small");
    const created = product.created ? new Date(product.created).toLocaleString() : "";
    const n = exampleCount(product);
    meta.textContent = [
      created,
      product.threshold != null ? `threshold ${Number(product.threshold).toFixed(2)}` : "",
      `${n} example${n === 1 ? "" : "s"}`,
      product.detections != null ? `${product.detections} detections` : "",
    ].filter(Boolean).join(" · ");
    const show = document.createElement("button");
    show.textContent = "show";
    show.className = "show";
    show.addEventListener("click", () => showProduct(window.marscopeMap, product));
    const text = document.createElement("div");
    text.append(title, meta);
    li.append(text, show);
    if (!state.config.static) {
      const del = document.createElement("button");
      del.textContent = "delete";
      del.className = "delete";
      del.addEventListener("click", () => deleteProduct(product));
      li.append(del);
    }
    list.appendChild(li);
  }
}

async function deleteProduct(product) {
  const name = (product.texts || []).join(", ") || product.id;
  if (!window.confirm(`Delete the product "${name}" (${product.id}) and its files?`)) return;
  try {
    await getJSON(`api/products/${encodeURIComponent(product.id)}`, { method: "DELETE" });
    if (state.current && state.current.id === product.id) {
      removeProduct(window.marscopeMap);
      state.current = null;
      renderDownloads(window.marscopeMap);
    }
    state.products = await getJSON(state.config.queries);
    renderProducts();
    setStatus(`deleted ${product.id}`);
    saveUrl(window.marscopeMap);
  } catch (err) {
    setStatus(err.message, true);
  }
}

// ---------------------------------------------------------------- examples

function thumbnail(map, lngLat) {
  // what the map shows around the example (the imagery and the layers), 48 x 48 px
  const canvas = map.getCanvas();
  const p = map.project(lngLat);
  const scale = canvas.width / canvas.clientWidth;
  const out = document.createElement("canvas");
  out.width = out.height = 48;
  try {
    out.getContext("2d").drawImage(canvas, (p.x - 24) * scale, (p.y - 24) * scale, 48 * scale, 48 * scale, 0, 0, 48, 48);
    return out.toDataURL("image/png");
  } catch {
    return null;
  }
}

function renderExamples() {
  const list = $("examples");
  list.innerHTML = "";
  state.examples.forEach((ex, i) => {
    const li = document.createElement("li");
    li.className = ex.negative ? "neg" : "pos";
    // the tile the model saw there (served by the engine); in a static site, what the map showed
    const img = document.createElement("img");
    img.alt = "the tile at this example";
    if (!state.config.static) {
      img.src = `api/cells/image?lon=${ex.lon.toFixed(6)}&lat=${ex.lat.toFixed(6)}`;
      img.addEventListener("error", () => (ex.thumb ? (img.src = ex.thumb) : img.remove()), { once: true });
      li.appendChild(img);
    } else if (ex.thumb) {
      img.src = ex.thumb;
      li.appendChild(img);
    }
    const text = document.createElement("span");
    text.textContent = `${ex.negative ? "−" : "+"} ${ex.lon.toFixed(4)}, ${ex.lat.toFixed(4)}`;
    const remove = document.createElement("button");
    remove.textContent = "×";
    remove.title = "remove";
    remove.addEventListener("click", () => {
      ex.marker.remove();
      state.examples.splice(i, 1);
      renderExamples();
      saveUrl(window.marscopeMap);
    });
    li.append(text, remove);
    list.appendChild(li);
  });
  $("example-count").textContent = String(state.examples.length);
}

function addExample(map, lngLat, negative, { render = true } = {}) {
  const marker = new maplibregl.Marker({ color: negative ? "#2b5fa8" : "#a04a21", scale: 0.6 }).setLngLat(lngLat).addTo(map);
  if (!$("layer-examples").checked) marker.getElement().style.display = "none";
  const thumb = map.loaded() ? thumbnail(map, lngLat) : null;
  state.examples.push({ lon: lngLat.lng, lat: lngLat.lat, negative, marker, thumb });
  if (render) {
    renderExamples();
    saveUrl(map);
  }
}

function clearExamples() {
  for (const ex of state.examples) ex.marker.remove();
  state.examples = [];
  renderExamples();
}

function setExamples(map, points, negatives) {
  clearExamples();
  for (const [lon, lat] of points) addExample(map, { lng: lon, lat }, false, { render: false });
  for (const [lon, lat] of negatives) addExample(map, { lng: lon, lat }, true, { render: false });
  renderExamples();
}

function setThreshold(value) {
  // the slider snaps to its steps; the label says what it holds
  $("threshold-query").value = String(value);
  $("threshold-query-value").textContent = Number($("threshold-query").value).toFixed(2);
}

function restoreQuery(map, product) {
  // showing a product brings back what asked for it: texts, threshold, examples
  const q = (product.stac && product.stac.properties && product.stac.properties["marscope:query"]) || {};
  $("texts").value = (product.texts || []).join("\n");
  if (product.threshold != null) setThreshold(product.threshold);
  setExamples(map, q.points || [], q.negatives_points || []);
  $("learner").value = q.learner || "prototype";
  if (product.assets.examples) {
    // the saved examples hold example cells too (as their centres)
    getJSON(product.assets.examples)
      .then((doc) => {
        if (!state.current || state.current.id !== product.id) return;
        const pick = (label) => doc.features.filter((f) => f.properties.label === label).map((f) => f.geometry.coordinates);
        setExamples(map, pick("positive"), pick("negative"));
        saveUrl(map);
      })
      .catch((err) => setStatus(`cannot read the product's examples: ${err.message}`, true));
  }
}

function examplesGeoJSON() {
  return {
    type: "FeatureCollection",
    name: "examples",
    crs: { type: "name", properties: { name: state.config.crs || "IAU_2015:49900" } },
    features: state.examples.map((ex) => ({
      type: "Feature",
      properties: { label: ex.negative ? "negative" : "positive" },
      geometry: { type: "Point", coordinates: [ex.lon, ex.lat] },
    })),
  };
}

function exportExamples() {
  const blob = new Blob([JSON.stringify(examplesGeoJSON(), null, 1)], { type: "application/geo+json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "examples.geojson";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

async function importExamples(map, file) {
  try {
    const doc = JSON.parse(await file.text());
    const features = (doc.features || []).filter((f) => f.geometry && f.geometry.type === "Point");
    if (!features.length) throw new Error("no Point features");
    const crs = doc.crs && doc.crs.properties && doc.crs.properties.name;
    if (crs && state.config.crs && crs !== state.config.crs) throw new Error(`examples are in ${crs}, the map in ${state.config.crs}`);
    for (const f of features) {
      const [lon, lat] = f.geometry.coordinates;
      const negative = String((f.properties || {}).label || "positive").toLowerCase().startsWith("neg");
      addExample(map, { lng: Number(lon), lat: Number(lat) }, negative, { render: false });
    }
    renderExamples();
    saveUrl(map);
    setStatus(`imported ${features.length} examples from ${file.name}`);
  } catch (err) {
    setStatus(`cannot import ${file.name}: ${err.message} (a GeoJSON of points with a label property)`, true);
  }
}

// box selection: every embedded cell inside the box becomes an example
function enableBoxSelect(map) {
  const container = map.getCanvasContainer();
  let start = null;
  let box = null;
  const point = (e) => {
    const r = container.getBoundingClientRect();
    return new maplibregl.Point(e.clientX - r.left, e.clientY - r.top);
  };
  container.addEventListener("mousedown", (e) => {
    if (!$("box-mode").checked || e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    map.dragPan.disable();
    start = point(e);
    box = document.createElement("div");
    box.className = "select-box";
    container.appendChild(box);
  }, true);
  window.addEventListener("mousemove", (e) => {
    if (!start) return;
    const p = point(e);
    Object.assign(box.style, {
      left: `${Math.min(p.x, start.x)}px`, top: `${Math.min(p.y, start.y)}px`,
      width: `${Math.abs(p.x - start.x)}px`, height: `${Math.abs(p.y - start.y)}px`,
    });
  });
  window.addEventListener("mouseup", async (e) => {
    if (!start) return;
    const end = point(e);
    box.remove();
    map.dragPan.enable();
    const a = map.unproject(start);
    const b = map.unproject(end);
    start = null;
    const bbox = [Math.min(a.lng, b.lng), Math.min(a.lat, b.lat), Math.max(a.lng, b.lng), Math.max(a.lat, b.lat)];
    try {
      const cells = await getJSON(`api/cells?bbox=${bbox.join(",")}`);
      const negative = $("negative-mode").checked;
      for (const [lon, lat] of cells.centres) addExample(map, { lng: lon, lat }, negative, { render: false });
      renderExamples();
      saveUrl(map);
      setStatus(`${cells.centres.length} cells added as ${negative ? "negative" : "positive"} examples`);
    } catch (err) {
      setStatus(err.message, true);
    }
  });
}

// ---------------------------------------------------------------- the view in the URL

function saveUrl(map) {
  if (state.restoring || !map) return;
  const c = map.getCenter();
  const params = new URLSearchParams();
  params.set("view", `${map.getZoom().toFixed(2)}/${c.lat.toFixed(5)}/${c.lng.toFixed(5)}`);
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (texts.length) params.set("texts", texts.join("|"));
  params.set("threshold", $("threshold-query").value);
  const fmt = (ex) => `${ex.lon.toFixed(5)},${ex.lat.toFixed(5)}`;
  const pos = state.examples.filter((e) => !e.negative).map(fmt);
  const neg = state.examples.filter((e) => e.negative).map(fmt);
  if (pos.length) params.set("points", pos.join(";"));
  if (neg.length) params.set("negatives", neg.join(";"));
  if (state.current) params.set("product", state.current.id);
  history.replaceState(null, "", `#${params.toString()}`);
}

function restoreUrl(map) {
  const params = new URLSearchParams(window.location.hash.slice(1));
  if (![...params.keys()].length) return false;
  state.restoring = true;
  try {
    restoreFrom(map, params);
  } catch (err) {
    setStatus(`part of this address could not be restored: ${err.message}`, true);
  } finally {
    state.restoring = false;
  }
  return true;
}

function restoreFrom(map, params) {
  const view = (params.get("view") || "").split("/").map(Number);
  if (view.length === 3 && view.every(Number.isFinite)) map.jumpTo({ zoom: view[0], center: [view[2], view[1]] });
  const product = state.products.find((p) => p.id === params.get("product"));
  if (product) showProduct(map, product, { fit: false, restore: false });
  if (params.has("texts")) $("texts").value = params.get("texts").split("|").join("\n");
  if (params.has("threshold")) setThreshold(params.get("threshold"));
  const valid = ([lon, lat]) => Number.isFinite(lon) && Number.isFinite(lat) && Math.abs(lat) <= 90 && Math.abs(lon) <= 360;
  const pairs = (key) => (params.get(key) ? params.get(key).split(";").map((p) => p.split(",").map(Number)).filter(valid) : []);
  setExamples(map, pairs("points"), pairs("negatives"));
}

// ---------------------------------------------------------------- querying

function setStatus(text, error = false) {
  $("status").className = error ? "error" : "";
  $("status").textContent = text;
}

// six decimals (0.1 m on Mars): a thousand examples stay well under the 64 KB request limit
const lonLat = (e) => [Number(e.lon.toFixed(6)), Number(e.lat.toFixed(6))];

function queryBody() {
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const body = {
    texts,
    live: true, // the answer's tiles now, its files written after
    classify: $("classify").checked,
    threshold: Number($("threshold-query").value),
    points: state.examples.filter((e) => !e.negative).map(lonLat),
    negative_points: state.examples.filter((e) => e.negative).map(lonLat),
  };
  const composite = $("composite").value;
  if (composite) {
    body[composite] = $("composite-text").value;
    if (composite === "near") body.within_km = Number($("within-km").value);
  }
  // the map needs the tiles and detections; the per-cell scores table on request
  if (!$("scores-table").checked) body.products = ["tiles", "preview", "detections"];
  if (body.classify) {
    body.points = [];
    body.negative_points = [];
  } else if (body.points.length) {
    body.learner = $("learner").value;
  }
  return body;
}

async function runQuery(map) {
  if (state.controller) return;
  const body = queryBody();
  state.controller = new AbortController();
  $("run").disabled = true;
  $("cancel").hidden = false;
  const t0 = performance.now();
  const tick = setInterval(() => setStatus(`asking… ${((performance.now() - t0) / 1000).toFixed(0)} s`), 250);
  setStatus("asking…");
  document.body.dataset.asking = "1";
  try {
    const answer = await getJSON("api/query", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    clearInterval(tick);
    state.answer = answer.products.map((p) => p.id);
    const first = answer.products[0];
    const what = first.legend && first.legend.length
      ? `class map of ${first.legend.length - 1} classes`
      : `${first.detections ?? 0} detections`;
    const more = answer.products.length > 1 ? ` (+${answer.products.length - 1} more in the list)` : "";
    const seconds = ((performance.now() - t0) / 1000).toFixed(2);
    if (first.live) {
      showProduct(map, first, { restore: false });
      setStatus(`${first.id}: ${what} (${seconds} s; writing its files…)${more}`);
    }
    // the published products: files written, records naming them (cancel stops the wait)
    const signal = state.controller.signal;
    const settled = await Promise.allSettled(
      answer.products.map((p) => (p.live ? getJSON(p.written, { signal }) : p)),
    );
    state.products = await getJSON(state.config.queries);
    const failed = settled.find((r) => r.status === "rejected");
    if (failed) {
      renderProducts();
      throw failed.reason;
    }
    const shown = settled[0].value;
    if (!first.live || (state.current && state.current.id === shown.id)) {
      showProduct(map, shown, { restore: false, fit: !first.live });
    } else {
      renderProducts();
    }
    map.once("idle", () => {
      setStatus(`${shown.id}: ${what} (${seconds} s)${more}`);
      document.body.dataset.rendered = shown.id;
      document.body.dataset.seconds = seconds;
    });
  } catch (err) {
    clearInterval(tick);
    if (err.name === "AbortError") setStatus("cancelled (the server finishes and publishes it; it will be in the list)");
    else setStatus(err.message, true);
  } finally {
    state.controller = null;
    $("run").disabled = false;
    $("cancel").hidden = true;
    delete document.body.dataset.asking;
  }
}

// ---------------------------------------------------------------- start

function detectionPopup(map, e, feature) {
  const p = feature.properties;
  const box = document.createElement("div");
  const lines = [
    "detection",
    `max. probability ${Number(p.max_probability).toFixed(3)}`,
    `mean probability ${Number(p.mean_probability).toFixed(3)}`,
    `${Number(p.cells)} ${Number(p.cells) === 1 ? "cell" : "cells"}`,
  ];
  lines.forEach((text, i) => {
    const line = document.createElement(i === 0 ? "b" : "div");
    line.textContent = text;
    box.appendChild(line);
  });
  for (const source of sourcesNear(e.lngLat)) {
    const a = document.createElement("a");
    a.href = `sources/${encodeURIComponent(source.id)}.json`;
    a.target = "_blank";
    a.textContent = source.id; // text, never markup
    box.appendChild(a);
    box.appendChild(document.createElement("br"));
  }
  const popup = new maplibregl.Popup().setLngLat(e.lngLat).setDOMContent(box);
  if (!state.config.static) {
    const row = document.createElement("div");
    row.className = "mark";
    for (const [label, negative, cls] of [["right", false, "mark-right"], ["wrong", true, "mark-wrong"]]) {
      const button = document.createElement("button");
      button.textContent = label;
      button.className = cls;
      button.title = negative ? "not this landform: a negative example" : "this landform: a positive example";
      button.addEventListener("click", () => {
        addExample(map, e.lngLat, negative);
        popup.remove();
      });
      row.appendChild(button);
    }
    box.appendChild(row);
  }
  popup.addTo(map);
}

function makeMap(config) {
  const sources = {};
  const layers = [{ id: "background", type: "background", paint: { "background-color": "#1b1410" } }];
  if (config.basemap) {
    sources.imagery = { type: "raster", url: `pmtiles://${absolute(config.basemap)}`, tileSize: 256 };
    layers.push({ id: "imagery", type: "raster", source: "imagery" });
  }
  const map = new maplibregl.Map({
    container: "map",
    style: { version: 8, sources, layers },
    bounds: config.bbox ? [[config.bbox[0], config.bbox[1]], [config.bbox[2], config.bbox[3]]] : undefined,
    attributionControl: false,
    renderWorldCopies: false,
    boxZoom: false, // shift-click adds a negative example
    canvasContextAttributes: { preserveDrawingBuffer: true },
  });
  window.marscopeMap = map;
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
  map.addControl(new BodyScale(config.radius_m), "bottom-left");
  map.on("mousemove", (e) => {
    $("readout").textContent = `${e.lngLat.lng.toFixed(4)}° E, ${e.lngLat.lat.toFixed(4)}° N (${config.body})`;
  });
  map.on("moveend", () => {
    saveUrl(map);
    renderDownloads(map);
  });
  map.on("click", (e) => {
    if ($("box-mode").checked) return;
    const negative = e.originalEvent.shiftKey || $("negative-mode").checked;
    const layer = map.getLayer("detections-fill") && map.getLayoutProperty("detections-fill", "visibility") !== "none";
    const hits = layer ? map.queryRenderedFeatures(e.point, { layers: ["detections-fill"] }) : [];
    if (hits.length && !negative) return detectionPopup(map, e, hits[0]);
    if (!config.static) addExample(map, e.lngLat, negative);
  });
  return map;
}

function wireControls(map, config) {
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
    if (map.getLayer("probability")) map.setPaintProperty("probability", "raster-opacity", Number($("opacity").value));
  });
  $("cutoff").addEventListener("change", () => {
    const c = state.current;
    if (c && (c.assets.tiles || (c.live && c.tiles.probability))) addProbability(map, c);
    applyVisibility(map);
  });
  $("cutoff").addEventListener("input", () => {
    $("cutoff-value").textContent = Number($("cutoff").value).toFixed(2);
  });
  $("filter").addEventListener("input", () => {
    $("filter-value").textContent = Number($("filter").value).toFixed(2);
    for (const id of ["detections-fill", "detections-line"]) if (map.getLayer(id)) map.setFilter(id, detectionFilter());
  });
  $("threshold-query").addEventListener("input", () => {
    $("threshold-query-value").textContent = Number($("threshold-query").value).toFixed(2);
    saveUrl(map);
  });
  $("texts").addEventListener("input", () => saveUrl(map));
  $("texts").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      runQuery(map);
    }
  });
  $("query-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runQuery(map);
  });
  $("cancel").addEventListener("click", () => state.controller && state.controller.abort());
  for (const name of ["imagery", "probability", "detections", "examples"]) {
    $(`layer-${name}`).addEventListener("change", () => applyVisibility(map));
  }
  $("product-filter").addEventListener("input", renderProducts);
  $("export-examples").addEventListener("click", exportExamples);
  $("import-examples").addEventListener("change", (e) => {
    if (e.target.files.length) importExamples(map, e.target.files[0]);
    e.target.value = "";
  });
  $("clear-examples").addEventListener("click", () => {
    clearExamples();
    saveUrl(map);
  });
  if (config.static) {
    $("query-form").hidden = true;
    $("box-mode-label").hidden = true;
  } else {
    enableBoxSelect(map);
  }
}

async function start() {
  const config = await loadConfig();
  state.config = config;
  $("body-name").textContent = config.body;
  const map = makeMap(config);
  wireControls(map, config);
  await new Promise((resolve) => map.on("load", resolve));
  state.products = await getJSON(config.queries);
  renderProducts();
  if (!restoreUrl(map) && state.products.length && config.static) showProduct(map, state.products[0]);
  document.body.dataset.ready = "1";
}

function sourcesNear(lngLat) {
  const sources = (state.config && state.config.sources) || [];
  return sources.filter((s) => s.bbox[0] <= lngLat.lng && lngLat.lng <= s.bbox[2] && s.bbox[1] <= lngLat.lat && lngLat.lat <= s.bbox[3]);
}

start().catch((err) => {
  setStatus(`cannot start: ${err.message}`, true);
  console.error(err);
});
