(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("snapshot-data").textContent);
  var gd = document.getElementById("map");
  var img = document.getElementById("hover-img");
  var caption = document.getElementById("hover-caption");
  function thumb(i) {
    var uri = data.thumbs[data.hashes[i]];
    return typeof uri === "string" && uri.indexOf("data:image/webp;base64,") === 0 ? uri : null;
  }
  function show(i) {
    var uri = thumb(i);
    if (uri) { img.src = uri; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
    var c = String(data.cluster[i]);
    caption.textContent = data.paths[i] + "\n" + (data.folders[i] ? "folders: " + data.folders[i] + "\n" : "") +
      "cluster " + c + ": " + data.labels[c];
  }
  Plotly.newPlot(gd, data.traces, data.layout, {responsive: true, displaylogo: false, scrollZoom: true});
  gd.on("plotly_hover", function (ev) {
    if (ev && ev.points && ev.points.length) { show(ev.points[0].customdata); }
  });
  function fill(gallery) {
    if (gallery.getAttribute("data-filled")) { return; }
    gallery.setAttribute("data-filled", "1");
    var idx = data.members[gallery.getAttribute("data-cluster")] || [];
    var n = Math.min(idx.length, data.galleryTiles);
    for (var k = 0; k < n; k++) {
      var tile = document.createElement("img");
      var uri = thumb(idx[k]);
      if (uri) { tile.src = uri; }
      tile.alt = data.paths[idx[k]];
      tile.title = data.paths[idx[k]];
      tile.addEventListener("mouseenter", show.bind(null, idx[k]));
      gallery.appendChild(tile);
    }
    if (idx.length > n) {
      var more = document.createElement("span");
      more.className = "more";
      more.textContent = "and " + (idx.length - n) + " more";
      gallery.appendChild(more);
    }
  }
  document.querySelectorAll("#cluster-list details").forEach(function (d) {
    d.addEventListener("toggle", function () { if (d.open) { fill(d.querySelector(".gallery")); } });
  });
})();
