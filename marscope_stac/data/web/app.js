// MarScope-STAC web map: ask the planet, see the answer, refine it with examples.
import * as maplibregl from "./vendor/maplibre-gl.mjs";

const $ = (id) => document.getElementById(id);
const state = { config: null, current: null, examples: [], products: [] };

const protocol = new pmtiles.Protocol();
maplibregl.addProtocol("pmtiles", protocol.tile);

function absolute(url) {
  return new URL(url, window.location.href).href;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function loadConfig() {
  // a static site (marscope serve --static) has its configuration in a file
  if (document.documentElement.dataset.static) return await getJSON("config.json");
  return await getJSON("api/config");
}

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

function removeProduct(map) {
  for (const id of ["detections-line", "detections-fill", "probability"]) {
    if (map.getLayer(id)) map.removeLayer(id);
  }
  for (const id of ["detections", "probability"]) {
    if (map.getSource(id)) map.removeSource(id);
  }
}

function showProduct(map, product) {
  removeProduct(map);
  state.current = product;
  const assets = product.assets;
  if (assets.tiles) {
    map.addSource("probability", { type: "raster", url: `pmtiles://${absolute(assets.tiles)}`, tileSize: 256 });
    map.addLayer({
      id: "probability",
      type: "raster",
      source: "probability",
      paint: { "raster-opacity": Number($("opacity").value), "raster-resampling": "nearest" },
    });
  }
  if (assets["detection-tiles"]) {
    map.addSource("detections", { type: "vector", url: `pmtiles://${absolute(assets["detection-tiles"])}` });
    const filter = [">=", ["get", "max_probability"], Number($("filter").value)];
    map.addLayer({
      id: "detections-fill",
      type: "fill",
      source: "detections",
      "source-layer": "detections",
      filter,
      paint: { "fill-color": "#00e5ff", "fill-opacity": 0.12 },
    });
    map.addLayer({
      id: "detections-line",
      type: "line",
      source: "detections",
      "source-layer": "detections",
      filter,
      paint: { "line-color": "#00e5ff", "line-width": 1.5 },
    });
  }
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
  if (product.bbox) map.fitBounds([[product.bbox[0], product.bbox[1]], [product.bbox[2], product.bbox[3]]], { padding: 20, duration: 0 });
  const links = [["item", "STAC item"], ["probability", "COG"], ["tiles", "PMTiles"], ["detections", "detections GeoParquet"], ["scores", "scores GeoParquet"]];
  $("downloads").innerHTML = "";
  for (const [key, label] of links) {
    const url = key === "item" ? product.item : assets[key];
    if (!url) continue;
    const a = document.createElement("a");
    a.href = url;
    a.textContent = label;
    a.download = "";
    $("downloads").appendChild(a);
  }
  renderProducts();
  document.body.dataset.product = product.id;
}

function renderProducts() {
  const list = $("queries");
  list.innerHTML = "";
  for (const product of state.products) {
    const li = document.createElement("li");
    li.className = state.current && state.current.id === product.id ? "current" : "";
    const name = document.createElement("span");
    name.textContent = (product.texts || []).join(", ") || product.id;
    const show = document.createElement("button");
    show.textContent = "show";
    show.addEventListener("click", () => showProduct(window.marscopeMap, product));
    li.append(name, show);
    list.appendChild(li);
  }
}

// ---------------------------------------------------------------- examples

function renderExamples() {
  const list = $("examples");
  list.innerHTML = "";
  state.examples.forEach((ex, i) => {
    const li = document.createElement("li");
    li.className = ex.negative ? "neg" : "pos";
    const text = document.createElement("span");
    text.textContent = `${ex.negative ? "−" : "+"} ${ex.lon.toFixed(4)}, ${ex.lat.toFixed(4)}`;
    const remove = document.createElement("button");
    remove.textContent = "×";
    remove.title = "remove";
    remove.addEventListener("click", () => {
      ex.marker.remove();
      state.examples.splice(i, 1);
      renderExamples();
    });
    li.append(text, remove);
    list.appendChild(li);
  });
}

function addExample(map, lngLat, negative) {
  const marker = new maplibregl.Marker({ color: negative ? "#2b5fa8" : "#a04a21" }).setLngLat(lngLat).addTo(map);
  state.examples.push({ lon: lngLat.lng, lat: lngLat.lat, negative, marker });
  renderExamples();
}

// ---------------------------------------------------------------- querying

async function runQuery(map) {
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const body = {
    texts,
    classify: $("classify").checked,
    threshold: Number($("threshold-query").value),
    points: state.examples.filter((e) => !e.negative).map((e) => [e.lon, e.lat]),
    negative_points: state.examples.filter((e) => e.negative).map((e) => [e.lon, e.lat]),
  };
  const composite = $("composite").value;
  if (composite) {
    body[composite] = $("composite-text").value;
    body.within_km = Number($("within-km").value);
  }
  // the map needs the tiles and detections; the per-cell scores table on request
  if (!$("scores-table").checked) body.products = ["tiles", "preview", "detections"];
  if (body.classify) {
    body.points = [];
    body.negative_points = [];
  }
  $("run").disabled = true;
  $("status").className = "";
  $("status").textContent = "asking…";
  const t0 = performance.now();
  try {
    const answer = await getJSON("api/query", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    state.products = await getJSON(state.config.queries);
    showProduct(map, answer.products[0]);
    map.once("idle", () => {
      const seconds = ((performance.now() - t0) / 1000).toFixed(2);
      const first = answer.products[0];
      const what = first.legend && first.legend.length
        ? `class map of ${first.legend.length - 1} classes`
        : `${first.detections ?? 0} detections`;
      $("status").textContent = `${first.id}: ${what} (${seconds} s)`;
      document.body.dataset.rendered = answer.products[0].id;
      document.body.dataset.seconds = seconds;
    });
  } catch (err) {
    $("status").className = "error";
    $("status").textContent = err.message;
  } finally {
    $("run").disabled = false;
  }
}

// ---------------------------------------------------------------- start

async function start() {
  const config = await loadConfig();
  state.config = config;
  $("body-name").textContent = config.body;
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
  map.on("click", (e) => {
    const negative = e.originalEvent.shiftKey || $("negative-mode").checked;
    const hits = map.getLayer("detections-fill") ? map.queryRenderedFeatures(e.point, { layers: ["detections-fill"] }) : [];
    if (hits.length && !negative) {
      const p = hits[0].properties;
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
      new maplibregl.Popup().setLngLat(e.lngLat).setDOMContent(box).addTo(map);
      return;
    }
    if (!config.static) addExample(map, e.lngLat, negative);
  });
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
    if (map.getLayer("probability")) map.setPaintProperty("probability", "raster-opacity", Number($("opacity").value));
  });
  $("filter").addEventListener("input", () => {
    $("filter-value").textContent = Number($("filter").value).toFixed(2);
    const filter = [">=", ["get", "max_probability"], Number($("filter").value)];
    for (const id of ["detections-fill", "detections-line"]) if (map.getLayer(id)) map.setFilter(id, filter);
  });
  $("threshold-query").addEventListener("input", () => {
    $("threshold-query-value").textContent = Number($("threshold-query").value).toFixed(2);
  });
  $("query-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runQuery(map);
  });
  if (config.static) $("query-form").hidden = true;
  await new Promise((resolve) => map.on("load", resolve));
  state.products = await getJSON(config.queries);
  renderProducts();
  if (state.products.length && config.static) showProduct(map, state.products[0]);
  document.body.dataset.ready = "1";
}

function sourcesNear(lngLat) {
  const sources = (state.config && state.config.sources) || [];
  return sources.filter((s) => s.bbox[0] <= lngLat.lng && lngLat.lng <= s.bbox[2] && s.bbox[1] <= lngLat.lat && lngLat.lat <= s.bbox[3]);
}

start().catch((err) => {
  $("status").className = "error";
  $("status").textContent = `cannot start: ${err.message}`;
  console.error(err);
});
