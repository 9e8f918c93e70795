// geovario's page: upload a photo to /api/predict, then show the top-k places on a map and in a table.
(function () {
  "use strict";
  const config = window.GEOVARIO || { tiles: null, topK: 5 };
  const $ = (id) => document.getElementById(id);

  // The map: a bundled Natural Earth outline (its own pane, under any tiles), so it works offline and
  // asks no server for anything; with --tiles, tiles on top when they load.
  const map = L.map("map", { worldCopyJump: true, minZoom: 1 }).setView([20, 0], 2);
  map.createPane("outline").style.zIndex = 150;
  // Natural Earth cuts shapes at the antimeridian for spherical projections; on a flat map a ring that
  // jumps from +180 to -180 would draw a band across the world, so keep each ring's longitudes continuous.
  function unwrapRings(geometry) {
    const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.type === "MultiPolygon" ? geometry.coordinates : [];
    polygons.forEach((polygon) => polygon.forEach((ring) => {
      for (let i = 1; i < ring.length; i++) {
        while (ring[i][0] - ring[i - 1][0] > 180) ring[i][0] -= 360;
        while (ring[i][0] - ring[i - 1][0] < -180) ring[i][0] += 360;
      }
    }));
  }
  fetch("/static/vendor/world-atlas/countries-110m.json")
    .then((r) => r.json())
    .then((topology) => {
      const countries = topojson.feature(topology, topology.objects.countries);
      countries.features.forEach((feature) => feature.geometry && unwrapRings(feature.geometry));
      L.geoJSON(countries, {
        pane: "outline", interactive: false,
        style: { color: "#6b7a8f", weight: 0.7, fillColor: "#eef0e6", fillOpacity: 1 },
      }).addTo(map);
    });
  if (config.tiles) {
    // Say what leaves the machine: the tile server sees which part of the map is viewed.
    const host = new URL(config.tiles.replace(/\{[a-z]\}/g, "0")).host;
    $("privacy").textContent = `Photos stay on this machine; map tiles come from ${host}, which sees the part of the map you view.`;
    L.tileLayer(config.tiles, {
      maxZoom: 18, attribution: '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors',
    }).addTo(map);
  }
  const markers = L.layerGroup().addTo(map);
  // The probability over the gallery: its most probable points shaded dark red to pale yellow over `decades`
  // powers of ten, under the place markers.
  map.createPane("heat").style.zIndex = 390;
  const heat = L.layerGroup().addTo(map);
  function shade(fraction) {  // 0: the least probable shown, 1: the most probable
    const stops = [[252, 253, 191], [254, 159, 109], [222, 73, 104], [140, 41, 129], [59, 15, 112]];
    const x = Math.min(Math.max(fraction, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
    const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }
  function showHeat(layer) {
    heat.clearLayers();
    if (!layer || !layer.points.length) return;
    const top = layer.points[layer.points.length - 1][2];
    layer.points.forEach(([lat, lon, value]) => {
      const color = shade(1 + (value - top) / layer.decades);
      heat.addLayer(L.circleMarker([lat, lon], {
        pane: "heat", radius: 3, stroke: false, fillColor: color, fillOpacity: 0.85, interactive: false, className: "heat",
      }));
    });
  }

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  function escape(text) {
    const div = document.createElement("div");
    div.textContent = text;
    return div.innerHTML;
  }

  function show(answer) {
    markers.clearLayers();
    showHeat(answer.heat);
    const body = $("results").querySelector("tbody");
    body.innerHTML = "";
    const points = [];
    const top = answer.predictions[0].prob;
    answer.predictions.forEach((p) => {
      const radius = 5 + 25 * Math.sqrt(p.prob / top);  // area grows with the probability, the best guess largest
      const marker = L.circleMarker([p.lat, p.lon], {
        radius, color: "#173f8a", weight: 2, fillColor: "#2767d9", fillOpacity: 0.55, className: "prediction",
      }).bindPopup(`<b>#${p.rank}</b> ${escape(p.label)}<br>${(100 * p.prob).toFixed(1)}%`);
      marker.bindTooltip(String(p.rank), { permanent: true, direction: "center", className: "rank-label" });
      markers.addLayer(marker);
      points.push([p.lat, p.lon]);
      const row = body.insertRow();
      row.className = "prediction-row";
      const away = p.place && !p.place.open_water ? ` <span class="away">${p.place.distance_km.toFixed(1)} km away</span>` : "";
      row.innerHTML = `<td>${p.rank}</td><td>${escape(p.label || "open water")}${away}</td>` +
        `<td>${p.lat.toFixed(3)}, ${p.lon.toFixed(3)}</td>` +
        `<td class="prob"><span class="bar" style="width:${Math.max(2, 60 * p.prob)}px"></span>${(100 * p.prob).toFixed(1)}%</td>`;
    });
    $("results").hidden = false;
    if (answer.exif) {
      const t = answer.exif;
      const truth = L.marker([t.lat, t.lon], { title: "true location (EXIF GPS)" })
        .bindPopup(`True location from the photo's EXIF GPS<br>${t.error_km.toFixed(1)} km from the best guess`)
        .bindTooltip("true", { permanent: true, direction: "right" });
      markers.addLayer(truth);
      markers.addLayer(L.polyline([[t.lat, t.lon], points[0]], { color: "#1a7f37", dashArray: "5 6", weight: 2 }));
      points.push([t.lat, t.lon]);
      $("truth").textContent = `The photo's EXIF GPS puts it at ${t.lat.toFixed(4)}, ${t.lon.toFixed(4)}: ` +
        `the best guess is ${t.error_km.toFixed(1)} km away.`;
      $("truth").hidden = false;
    } else {
      $("truth").hidden = true;
    }
    map.fitBounds(L.latLngBounds(points).pad(0.6), { maxZoom: 8 });
    if (answer.image) {
      setStatus(`${answer.image.width}×${answer.image.height} ${answer.image.format}, geolocated in ${answer.elapsed_ms} ms`);
    } else {
      setStatus(`"${answer.text}", located in ${answer.elapsed_ms} ms (a text query: the model was trained on photos only)`);
    }
  }

  function failed(error) {
    markers.clearLayers();
    heat.clearLayers();
    $("results").hidden = true;
    $("truth").hidden = true;
    setStatus(String(error.message || error), true);
  }

  async function ask(url, options) {
    const response = await fetch(url, options);
    const answer = await response.json();
    if (!response.ok) {
      const detail = Array.isArray(answer.detail) ? answer.detail.map((d) => d.msg).join("; ") : answer.detail;
      throw new Error(detail || response.statusText);
    }
    return answer;
  }

  async function locateText(text) {
    if (!text.trim()) {
      setStatus("Describe a place first, e.g. a snowy street with red trams", true);
      return;
    }
    $("photo").hidden = true;
    $("drop-text").hidden = false;
    setStatus("Locating…");
    try {
      show(await ask("/api/predict-text", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text, top_k: config.topK }),
      }));
    } catch (error) {
      failed(error);
    }
  }

  async function upload(file) {
    if (!file) return;
    $("photo").src = URL.createObjectURL(file);
    $("photo").hidden = false;
    $("drop-text").hidden = true;
    if (config.maxUploadBytes && file.size > config.maxUploadBytes) {
      setStatus(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ${config.maxUploadBytes / 2 ** 20} MB`, true);
      return;
    }
    setStatus("Geolocating…");
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      show(await ask(`/api/predict?top_k=${config.topK}&heat=true`, { method: "POST", body: form }));
    } catch (error) {
      failed(error);
    }
  }

  $("text-form").addEventListener("submit", (e) => { e.preventDefault(); locateText($("text").value); });

  $("file").addEventListener("change", (e) => upload(e.target.files[0]));
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => upload(e.dataTransfer.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
})();
