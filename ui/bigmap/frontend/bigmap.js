// RepLens big map: every point of a layout drawn in the browser, panned and zoomed without asking
// the server, hovered, clicked, box- and lasso-selected. Plain JS, no library, nothing fetched.
//
// Data: the points blob (float32 x,y + file names) and the colours blob (category codes or values +
// legend) arrive once each, as chunk components (chunk.js), and are kept page-wide by content id.
// This component's own data is small JSON: which blobs to show, and which of them this run sends.
//
// Rendering: WebGL2 points on a hardware GPU; on a software GL (SwiftShader, llvmpipe: headless
// Chromium with --disable-gpu) or without WebGL, a 2-D canvas density render in plain JS, which is
// ~50x faster there. Both draw every point; where points share a screen pixel the canvas render
// averages their colours and the status line says how many do. localStorage
// "replens.bigmap.renderer" = "webgl" | "canvas" overrides the choice (tests draw with both).
//
// window.__replensBigmap.maps.get(name) is the live map (stats, pagePoint, selection), which the
// browser tests and bench/map_scale.py read.

const G = (window.__replensBigmap ??= {
  raw: new Map(), parts: new Map(), waiters: new Map(), maps: new Map(), views: new Map(), asked: new Map(),
});
const PARSED = (G.parsed ??= new Map());
const INSTANCES = (G.instances ??= new WeakMap());
const BACKGROUND = [250, 250, 252];
const LEGEND_WIDTH = 200;
const HIT_PX = 8;
const ASK_AFTER_MS = 10000;

// ---------------------------------------------------------------------------------- blobs

function parseBlob(buffer) {
  const bytes = new Uint8Array(buffer);
  const dv = new DataView(buffer);
  if (String.fromCharCode(...bytes.subarray(0, 4)) !== "RLBM") throw new Error("big map: not an RLBM blob");
  const length = dv.getUint32(4, true);
  const head = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
  const start = 8 + length;
  const sections = {};
  for (const s of head.sections) {
    const at = start + s.offset;
    if (s.encoding === "deflate") {
      sections[s.name] = { deflated: bytes.subarray(at, at + s.nbytes), dtype: s.dtype, count: s.count };
    } else {
      const Type = { f32: Float32Array, u8: Uint8Array, u16: Uint16Array, u32: Uint32Array }[s.dtype];
      sections[s.name] = { array: new Type(buffer, at, s.count) };
    }
  }
  return { meta: head.meta, sections };
}

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function blobNow(id) {
  if (PARSED.has(id)) return PARSED.get(id);
  const buffer = G.raw.get(id);
  if (!buffer) return null;
  const parsed = parseBlob(buffer);
  PARSED.set(id, parsed);
  while (PARSED.size > 8) PARSED.delete(PARSED.keys().next().value);
  return parsed;
}

function waitForBlob(id) {
  const ready = blobNow(id);
  if (ready) return Promise.resolve(ready);
  return new Promise((resolve) => {
    const list = G.waiters.get(id) ?? [];
    list.push(() => resolve(blobNow(id)));
    G.waiters.set(id, list);
  });
}

// ---------------------------------------------------------------------------------- colours

function rgbOf(hex) {
  const h = hex.replace("#", "");
  return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)];
}

// Per-point colour codes and lookup tables (RGBA per code; alpha 0 = hidden) for a colours blob.
function colourModel(blob, n) {
  const meta = blob.meta;
  if (meta.mode === "values") {
    const values = blob.sections.values.array;
    const codes = new Uint16Array(n);
    const span = meta.max > meta.min ? meta.max - meta.min : 1;
    const steps = meta.scale.length;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      codes[i] = Number.isFinite(v) ? Math.min(steps - 1, Math.max(0, Math.floor(((v - meta.min) / span) * steps))) : steps;
    }
    const colours = [...meta.scale, meta.missing].map(rgbOf);
    return { meta, codes, colours, entryOf: null, values };
  }
  const entryOf = blob.sections.entry_of.array;
  const colours = Array.from(entryOf, (e) => rgbOf(meta.entries[e].colour));
  return { meta, codes: blob.sections.codes.array, colours, entryOf, values: null };
}

function lookupTables(model, hiddenEntries) {
  const k = model.colours.length;
  const lut = new Uint8Array(k * 4);
  const dim = new Uint8Array(k * 4);
  for (let c = 0; c < k; c++) {
    const [r, g, b] = model.colours[c];
    const hidden = model.entryOf && hiddenEntries.has(model.entryOf[c]);
    lut.set([r, g, b, hidden ? 0 : 255], c * 4);
    // Unselected points fade towards the background, as Plotly's do.
    dim.set([r * 0.25 + BACKGROUND[0] * 0.75, g * 0.25 + BACKGROUND[1] * 0.75, b * 0.25 + BACKGROUND[2] * 0.75, hidden ? 0 : 255], c * 4);
  }
  return { lut, dim };
}

// ---------------------------------------------------------------------------------- spatial grid

function buildGrid(xy, n, bounds) {
  const side = Math.max(1, Math.min(1024, Math.ceil(Math.sqrt(n / 4))));
  const [x0, x1, y0, y1] = bounds;
  const cw = (x1 - x0) / side || 1;
  const ch = (y1 - y0) / side || 1;
  const cell = new Uint32Array(n);
  const starts = new Uint32Array(side * side + 1);
  for (let i = 0; i < n; i++) {
    const cx = Math.min(side - 1, Math.max(0, Math.floor((xy[2 * i] - x0) / cw)));
    const cy = Math.min(side - 1, Math.max(0, Math.floor((xy[2 * i + 1] - y0) / ch)));
    const c = cy * side + cx;
    cell[i] = c;
    starts[c + 1]++;
  }
  for (let c = 0; c < side * side; c++) starts[c + 1] += starts[c];
  const fill = starts.slice(0, side * side);
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[fill[cell[i]]++] = i;
  return { side, x0, y0, cw, ch, starts, order };
}

function cellRange(grid, xa, xb, ya, yb) {
  const clamp = (v) => Math.min(grid.side - 1, Math.max(0, v));
  return [
    clamp(Math.floor((xa - grid.x0) / grid.cw)), clamp(Math.floor((xb - grid.x0) / grid.cw)),
    clamp(Math.floor((ya - grid.y0) / grid.ch)), clamp(Math.floor((yb - grid.y0) / grid.ch)),
  ];
}

// ---------------------------------------------------------------------------------- renderers

// Point radius in pixels for the number of points in view: single pixels for a dense overview,
// discs once few enough are in view to tell apart.
function radiusFor(drawn) {
  return drawn > 300000 ? 0 : drawn > 40000 ? 1 : drawn > 4000 ? 2 : 3;
}

function discOffsets(radius) {
  const out = [];
  for (let dy = -radius; dy <= radius; dy++)
    for (let dx = -radius; dx <= radius; dx++) if (dx * dx + dy * dy <= radius * radius + radius) out.push(dx, dy);
  return Int32Array.from(out);
}

class CanvasRenderer {
  constructor(canvas) {
    this.name = "canvas";
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.size = [0, 0];
    this.countsPoints = true; // draw() also counts the points in view and the shared pixels
  }
  resize(w, h) {
    if (this.size[0] === w && this.size[1] === h) return;
    this.size = [w, h];
    this.canvas.width = w;
    this.canvas.height = h;
    this.image = this.ctx.createImageData(w, h);
    this.out = new Uint32Array(this.image.data.buffer);
    this.count = new Uint32Array(w * h);
    this.centre = new Uint8Array(w * h);
    this.sums = [new Uint32Array(w * h), new Uint32Array(w * h), new Uint32Array(w * h)];
  }
  // Every point in view is accumulated (colour sums and counts per pixel), then each pixel shows the
  // mean colour of its points with an opacity that grows with their number: a density render in
  // which a lone point is a plain dot. Returns how many points are in view and how many of those
  // share their centre pixel with another.
  draw(f) {
    const [W, H] = this.size;
    const { xy, codes, lut, dim, mask, n, view, radius, alpha } = f;
    const count = this.count, centre = this.centre;
    const [sr, sg, sb] = this.sums;
    count.fill(0);
    sr.fill(0); sg.fill(0); sb.fill(0);
    if (radius > 0) centre.fill(0);
    // Per-code channels, unselected codes after selected ones: code c of a point is c * 2 + selected.
    const k = lut.length / 4;
    const cr = new Uint8Array(2 * k), cg = new Uint8Array(2 * k), cb = new Uint8Array(2 * k), shown = new Uint8Array(2 * k);
    for (let c = 0; c < k; c++) {
      for (const [slot, table] of [[2 * c, dim], [2 * c + 1, lut]]) {
        cr[slot] = table[4 * c]; cg[slot] = table[4 * c + 1]; cb[slot] = table[4 * c + 2]; shown[slot] = table[4 * c + 3] ? 1 : 0;
      }
    }
    const s = view.s, cx = view.cx, cy = view.cy, hw = W / 2, hh = H / 2;
    let drawn = 0, overlap = 0;
    if (radius === 0) {
      for (let i = 0, j = 0; i < n; i++, j += 2) {
        const slot = 2 * codes[i] + (mask === null ? 1 : mask[i]);
        if (shown[slot] === 0) continue;
        const fx = (xy[j] - cx) * s + hw;
        if (!(fx >= 0 && fx < W)) continue;
        const fy = hh - (xy[j + 1] - cy) * s;
        if (!(fy >= 0 && fy < H)) continue;
        const p = (fy | 0) * W + (fx | 0);
        const before = count[p];
        if (before === 1) overlap += 2;
        else if (before > 1) overlap++;
        count[p] = before + 1;
        drawn++;
        sr[p] += cr[slot]; sg[p] += cg[slot]; sb[p] += cb[slot];
      }
    } else {
      const offs = discOffsets(radius);
      for (let i = 0, j = 0; i < n; i++, j += 2) {
        const slot = 2 * codes[i] + (mask === null ? 1 : mask[i]);
        if (shown[slot] === 0) continue;
        const fx = (xy[j] - cx) * s + hw;
        if (!(fx >= 0 && fx < W)) continue;
        const fy = hh - (xy[j + 1] - cy) * s;
        if (!(fy >= 0 && fy < H)) continue;
        const px = fx | 0, py = fy | 0;
        const at = py * W + px;
        const before = centre[at];
        if (before === 1) overlap += 2;
        else if (before > 1) overlap++;
        if (before < 255) centre[at] = before + 1;
        drawn++;
        const r = cr[slot], g = cg[slot], b = cb[slot];
        const interior = px >= radius && px < W - radius && py >= radius && py < H - radius;
        for (let o = 0; o < offs.length; o += 2) {
          const x = px + offs[o], y = py + offs[o + 1];
          if (!interior && (x < 0 || x >= W || y < 0 || y >= H)) continue;
          const q = y * W + x;
          count[q]++;
          sr[q] += r; sg[q] += g; sb[q] += b;
        }
      }
    }
    const opacity = new Float32Array(64);
    for (let m = 0; m < 64; m++) opacity[m] = 1 - Math.pow(1 - alpha, m);
    const [br, bg, bb] = BACKGROUND;
    const background = (255 << 24) | (bb << 16) | (bg << 8) | br;
    const out = this.out;
    for (let p = 0; p < W * H; p++) {
      const m = count[p];
      if (m === 0) { out[p] = background; continue; }
      const a = m < 64 ? opacity[m] : 1;
      const r = (sr[p] / m) * a + br * (1 - a);
      const g = (sg[p] / m) * a + bg * (1 - a);
      const b = (sb[p] / m) * a + bb * (1 - a);
      out[p] = (255 << 24) | (b << 16) | (g << 8) | r;
    }
    this.ctx.putImageData(this.image, 0, 0);
    return { drawn, overlap };
  }
}

const VERTEX = `#version 300 es
in vec2 a_xy; in uint a_code; in uint a_sel;
uniform vec4 u_view; uniform vec2 u_half; uniform float u_size; uniform sampler2D u_lut; uniform int u_lutw; uniform int u_luth;
out vec4 v_colour;
void main() {
  int c = int(a_code);
  int row = c / u_lutw + (a_sel == 0u ? u_luth : 0);
  v_colour = texelFetch(u_lut, ivec2(c % u_lutw, row), 0);
  vec2 px = vec2((a_xy.x - u_view.x) * u_view.z, (a_xy.y - u_view.y) * u_view.z);
  gl_Position = v_colour.a == 0.0 ? vec4(2.0, 2.0, 2.0, 1.0) : vec4(px / u_half, 0.0, 1.0);
  gl_PointSize = u_size;
}`;
const FRAGMENT = `#version 300 es
precision highp float;
in vec4 v_colour; uniform float u_alpha; uniform float u_size; out vec4 o;
void main() {
  vec2 d = gl_PointCoord - vec2(0.5);
  if (u_size > 2.5 && dot(d, d) > 0.25) discard;
  o = vec4(v_colour.rgb, u_alpha);
}`;

class GLRenderer {
  constructor(canvas, gl) {
    this.name = "webgl";
    this.canvas = canvas;
    this.gl = gl;
    const program = gl.createProgram();
    for (const [type, source] of [[gl.VERTEX_SHADER, VERTEX], [gl.FRAGMENT_SHADER, FRAGMENT]]) {
      const shader = gl.createShader(type);
      gl.shaderSource(shader, source);
      gl.compileShader(shader);
      if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
      gl.attachShader(program, shader);
    }
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    this.program = program;
    this.loc = (name) => gl.getUniformLocation(program, name);
    this.buffers = { xy: gl.createBuffer(), code: gl.createBuffer(), sel: gl.createBuffer() };
    this.texture = gl.createTexture();
    this.uploaded = {};
    this.size = [0, 0];
  }
  resize(w, h) {
    this.size = [w, h];
    this.canvas.width = w;
    this.canvas.height = h;
  }
  // Binds ``target`` (attribute pointers read the bound buffer) and uploads ``array`` once.
  upload(key, array, target) {
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, target);
    if (this.uploaded[key] === array) return;
    gl.bufferData(gl.ARRAY_BUFFER, array, gl.STATIC_DRAW);
    this.uploaded[key] = array;
  }
  draw(f) {
    const gl = this.gl;
    const [W, H] = this.size;
    const { xy, codes, lut, dim, mask, n, view, radius, alpha } = f;
    gl.useProgram(this.program);
    gl.viewport(0, 0, W, H);
    gl.clearColor(BACKGROUND[0] / 255, BACKGROUND[1] / 255, BACKGROUND[2] / 255, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    const attr = (name) => gl.getAttribLocation(this.program, name);
    this.upload("xy", xy, this.buffers.xy);
    gl.enableVertexAttribArray(attr("a_xy"));
    gl.vertexAttribPointer(attr("a_xy"), 2, gl.FLOAT, false, 0, 0);
    this.upload("code", codes, this.buffers.code);
    const codeType = codes instanceof Uint8Array ? gl.UNSIGNED_BYTE : codes instanceof Uint16Array ? gl.UNSIGNED_SHORT : gl.UNSIGNED_INT;
    gl.enableVertexAttribArray(attr("a_code"));
    gl.vertexAttribIPointer(attr("a_code"), 1, codeType, 0, 0);
    if (mask) {
      this.upload("sel", mask, this.buffers.sel);
      gl.enableVertexAttribArray(attr("a_sel"));
      gl.vertexAttribIPointer(attr("a_sel"), 1, gl.UNSIGNED_BYTE, 0, 0);
    } else {
      gl.disableVertexAttribArray(attr("a_sel"));
      gl.vertexAttribI4ui(attr("a_sel"), 1, 0, 0, 0);
    }
    if (this.uploaded.lut !== lut) {
      const k = lut.length / 4;
      const w = Math.min(4096, k), h = Math.ceil(k / w);
      const table = new Uint8Array(w * h * 2 * 4);
      table.set(lut, 0);
      table.set(dim, w * h * 4);
      gl.bindTexture(gl.TEXTURE_2D, this.texture);
      gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, w, h * 2, 0, gl.RGBA, gl.UNSIGNED_BYTE, table);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      this.uploaded.lut = lut;
      this.lutSize = [w, h];
    }
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.uniform1i(this.loc("u_lut"), 0);
    gl.uniform1i(this.loc("u_lutw"), this.lutSize[0]);
    gl.uniform1i(this.loc("u_luth"), this.lutSize[1]);
    // Pixel centres as the canvas render rounds them: x = floor(fx) + 0.5.
    gl.uniform4f(this.loc("u_view"), view.cx, view.cy, view.s, 0);
    gl.uniform2f(this.loc("u_half"), W / 2, H / 2);
    gl.uniform1f(this.loc("u_size"), 2 * radius + 1);
    gl.uniform1f(this.loc("u_alpha"), alpha);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    gl.drawArrays(gl.POINTS, 0, n);
  }
}

function softwareGL(gl) {
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  const name = String(info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));
  return /swiftshader|llvmpipe|software|softpipe/i.test(name) ? name : null;
}

function makeRenderer(canvas, wanted) {
  const choice = localStorage.getItem("replens.bigmap.renderer") || wanted || "auto";
  if (choice !== "canvas") {
    const gl = canvas.getContext("webgl2", { antialias: false, preserveDrawingBuffer: true, premultipliedAlpha: false });
    if (gl && (choice === "webgl" || !softwareGL(gl))) {
      try {
        return new GLRenderer(canvas, gl);
      } catch (err) {
        console.warn("big map: WebGL2 failed, drawing on a 2-D canvas instead", err);
      }
    }
    if (gl) {
      // A canvas holding a WebGL context cannot give a 2-D one: start from a fresh element.
      const fresh = document.createElement("canvas");
      fresh.className = canvas.className;
      canvas.replaceWith(fresh);
      return new CanvasRenderer(fresh);
    }
  }
  return new CanvasRenderer(canvas);
}

// ---------------------------------------------------------------------------------- the map

const CSS = `
:host { display: block; }
.rl-root { font: 13px/1.35 "Source Sans Pro", sans-serif; color: #31333f; user-select: none; }
.rl-bar { display: flex; gap: 4px; align-items: center; margin-bottom: 4px; flex-wrap: wrap; }
.rl-bar button { font: inherit; border: 1px solid #d4d4d8; background: #fff; border-radius: 6px; padding: 2px 9px; cursor: pointer; }
.rl-bar button[aria-pressed="true"] { background: #e4e4e7; border-color: #a1a1aa; }
.rl-body { display: flex; gap: 8px; }
.rl-plot { position: relative; flex: 1 1 auto; min-width: 0; }
.rl-plot canvas { display: block; position: absolute; left: 0; top: 0; }
.rl-overlay { cursor: crosshair; }
.rl-legend { width: ${LEGEND_WIDTH}px; flex: 0 0 ${LEGEND_WIDTH}px; overflow-y: auto; }
.rl-legend h4 { margin: 0 0 4px; font-size: 13px; }
.rl-entry { display: flex; gap: 6px; align-items: center; cursor: pointer; padding: 1px 0; }
.rl-entry[data-hidden="true"] { opacity: 0.35; }
.rl-swatch { width: 11px; height: 11px; border-radius: 50%; flex: 0 0 11px; }
.rl-name { overflow-wrap: anywhere; }
.rl-bar-scale { height: 12px; border-radius: 3px; margin: 4px 0; }
.rl-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,0.95); border: 1px solid #d4d4d8; border-radius: 4px; padding: 3px 6px; max-width: 340px; overflow-wrap: anywhere; display: none; z-index: 2; }
.rl-status { color: #62636e; margin-top: 4px; font-size: 12px; }
`;

class BigMap {
  constructor(root) {
    this.root = root;
    this.mode = "pan";
    this.hidden = new Set();
    this.selection = null; // sorted Uint32Array of point indices
    this.selectionMask = null;
    this.stats = { ready: false, drawn: 0, overlap: 0, n: 0, frames: 0 };
    this.gen = 0;
    const style = document.createElement("style");
    style.textContent = CSS;
    const wrap = document.createElement("div");
    wrap.className = "rl-root";
    wrap.innerHTML = `<div class="rl-bar">
        <button data-mode="pan" aria-pressed="true" title="Drag to pan, wheel to zoom, click a point to select it">Pan</button>
        <button data-mode="box" aria-pressed="false" title="Drag a box to select the points inside">Box select</button>
        <button data-mode="lasso" aria-pressed="false" title="Draw around the points to select">Lasso select</button>
        <button data-act="reset" title="Show every point (double-click does the same)">Reset view</button>
        <button data-act="clear" title="Forget the selection">Clear selection</button>
      </div>
      <div class="rl-body"><div class="rl-plot"><canvas class="rl-points"></canvas><canvas class="rl-overlay"></canvas><div class="rl-tip"></div></div>
      <div class="rl-legend"></div></div>
      <div class="rl-status" data-testid="bigmap-status">Loading the map…</div>`;
    root.append(style, wrap);
    this.el = {
      plot: wrap.querySelector(".rl-plot"),
      overlay: wrap.querySelector(".rl-overlay"),
      legend: wrap.querySelector(".rl-legend"),
      tip: wrap.querySelector(".rl-tip"),
      status: wrap.querySelector(".rl-status"),
      bar: wrap.querySelector(".rl-bar"),
    };
    this.overlayCtx = this.el.overlay.getContext("2d");
    this.wire();
  }

  // ------------------------------------------------------------ data in

  async update(data, callbacks) {
    this.callbacks = callbacks;
    this.args = data;
    if (data.name) G.maps.set(data.name, this);
    this.el.plot.style.height = `${data.height}px`;
    if (!this.renderer) this.renderer = makeRenderer(this.el.plot.querySelector(".rl-points"), data.renderer);
    const gen = ++this.gen;
    this.stats.updateAt ??= performance.now();
    const sending = new Set(data.sending || []);
    for (const id of [data.points, data.colours]) if (!sending.has(id)) this.askIfMissing(id, sending);
    const [points, colours] = await Promise.all([waitForBlob(data.points), waitForBlob(data.colours)]);
    if (gen !== this.gen) return; // a newer update is on its way
    this.stats.blobsAt ??= performance.now();
    if (this.pointsId !== data.points) this.setPoints(data.points, points);
    if (this.coloursId !== data.colours) this.setColours(data.colours, colours);
    this.resize();
    if (!this.view) this.resetView(false);
    this.render();
  }

  askIfMissing(id, sending) {
    if (blobNow(id) || sending.has(id)) return;
    const ask = () => {
      if (blobNow(id)) return;
      const partial = G.parts.get(id);
      if (partial && performance.now() - partial.at < ASK_AFTER_MS) return setTimeout(ask, ASK_AFTER_MS);
      const last = G.asked.get(id) ?? -Infinity;
      if (performance.now() - last < ASK_AFTER_MS) return;
      G.asked.set(id, performance.now());
      this.callbacks.setTriggerValue("missing", id);
    };
    ask();
  }

  setPoints(id, blob) {
    this.pointsId = id;
    this.stats.drawn = 0;
    this.points = {
      n: blob.meta.n,
      xy: blob.sections.xy.array,
      bounds: blob.meta.bounds,
      names: blob.sections.names,
    };
    this.grid = null;
    this.clearSelection(false);
    this.view = G.views.get(id) ?? null;
    this.needsPrepare = true; // hover and selection's index, built once the first frame is up
  }

  async prepare() {
    const pts = this.points;
    if (!pts) return;
    if (!this.grid) this.grid = buildGrid(pts.xy, pts.n, pts.bounds);
    if (!pts.nameBytes) {
      const bytes = pts.names.deflated ? await inflate(pts.names.deflated) : pts.names.array;
      const starts = new Uint32Array(pts.n + 1);
      let k = 1;
      for (let i = 0; i < bytes.length && k < pts.n; i++) if (bytes[i] === 0) starts[k++] = i + 1;
      starts[pts.n] = bytes.length + 1;
      pts.nameStarts = starts;
      pts.nameBytes = bytes;
    }
  }

  nameOf(i) {
    const pts = this.points;
    if (!pts.nameBytes) return `point ${i + 1}`;
    return new TextDecoder().decode(pts.nameBytes.subarray(pts.nameStarts[i], pts.nameStarts[i + 1] - 1));
  }

  setColours(id, blob) {
    this.coloursId = id;
    this.colours = colourModel(blob, this.points.n);
    this.hidden = new Set();
    this.tables = lookupTables(this.colours, this.hidden);
    this.drawLegend();
  }

  // ------------------------------------------------------------ view and drawing

  resize() {
    const w = Math.max(50, Math.floor(this.el.plot.clientWidth));
    const h = Math.max(50, Math.floor(this.args.height));
    if (this.renderer.size[0] !== w || this.renderer.size[1] !== h) {
      this.renderer.resize(w, h);
      this.el.overlay.width = w;
      this.el.overlay.height = h;
      if (!this.view && this.points) this.resetView(false);
    }
  }

  resetView(redraw = true) {
    const [x0, x1, y0, y1] = this.points.bounds;
    const [W, H] = this.renderer.size;
    const s = 0.94 * Math.min(W / (x1 - x0 || 1), H / (y1 - y0 || 1));
    this.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, s };
    G.views.set(this.pointsId, this.view);
    if (redraw) this.render();
  }

  render() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      this.drawNow();
    });
  }

  // Which points are in view, and how many share a centre pixel (the density render blends them).
  countInView() {
    const { xy, n } = this.points;
    const [W, H] = this.renderer.size;
    const { s, cx, cy } = this.view;
    const lut = this.tables.lut, codes = this.colours.codes;
    const centre = (this.centreCount && this.centreCount.length === W * H) ? this.centreCount : (this.centreCount = new Uint8Array(W * H));
    centre.fill(0);
    let drawn = 0, overlap = 0;
    for (let i = 0; i < n; i++) {
      if (lut[codes[i] * 4 + 3] === 0) continue;
      const fx = (xy[2 * i] - cx) * s + W / 2;
      if (!(fx >= 0 && fx < W)) continue;
      const fy = H / 2 - (xy[2 * i + 1] - cy) * s;
      if (!(fy >= 0 && fy < H)) continue;
      drawn++;
      const p = (fy | 0) * W + (fx | 0);
      const k = centre[p];
      if (k === 1) overlap += 2;
      else if (k > 1) overlap++;
      if (k < 255) centre[p] = k + 1;
    }
    return { drawn, overlap };
  }

  drawNow() {
    if (!this.points || !this.colours || !this.view) return;
    const t0 = performance.now();
    const guess = this.stats.drawn || this.points.n; // the point size follows how many are in view
    const radius = radiusFor(guess);
    const frame = {
      xy: this.points.xy, codes: this.colours.codes, lut: this.tables.lut, dim: this.tables.dim,
      mask: this.selectionMask, n: this.points.n, view: this.view, radius, alpha: guess > 100000 ? 0.5 : 0.85,
    };
    let counted;
    if (this.renderer.countsPoints) counted = this.renderer.draw(frame);
    else {
      counted = this.countInView();
      this.renderer.draw(frame);
    }
    const ms = performance.now() - t0;
    Object.assign(this.stats, {
      ready: true, drawn: counted.drawn, overlap: counted.overlap, n: this.points.n, radius, frameMs: ms,
      renderer: this.renderer.name, pointsId: this.pointsId, coloursId: this.coloursId, frames: this.stats.frames + 1,
      selected: this.selection ? this.selection.length : 0,
    });
    this.drawStatus();
    if (!this.stats.firstFrameAt) this.stats.firstFrameAt = performance.now();
    if (this.needsPrepare) {
      this.needsPrepare = false;
      setTimeout(() => this.prepare(), 0);
    }
    if (radiusFor(counted.drawn) !== radius) this.render(); // zoomed past a size step: draw once more
  }

  drawStatus() {
    const { n, drawn, overlap } = this.stats;
    const fmt = (v) => v.toLocaleString("en-US");
    const parts = [`${fmt(n)} points`, `${fmt(drawn)} in view, every one drawn (no sampling)`];
    if (overlap > 0)
      parts.push(`${fmt(overlap)} share a screen pixel with another point: their colours are blended into a density; zoom in to separate them`);
    else parts.push("no two points share a pixel");
    if (this.selection) parts.push(`${fmt(this.selection.length)} selected`);
    parts.push(`${this.renderer.name === "webgl" ? "WebGL" : "2-D canvas"} renderer`);
    this.el.status.textContent = parts.join(" · ");
  }

  drawLegend() {
    const meta = this.colours.meta;
    const box = this.el.legend;
    box.replaceChildren();
    const title = document.createElement("h4");
    title.textContent = meta.title;
    box.append(title);
    if (meta.mode === "values") {
      const bar = document.createElement("div");
      bar.className = "rl-bar-scale";
      bar.style.background = `linear-gradient(to right, ${meta.scale.filter((_, i) => i % 16 === 0).join(",")})`;
      const range = document.createElement("div");
      range.className = "rl-range";
      range.textContent = `${meta.min.toLocaleString("en-US")} – ${meta.max.toLocaleString("en-US")}`;
      box.append(bar, range);
      return;
    }
    meta.entries.forEach((entry, e) => {
      const row = document.createElement("div");
      row.className = "rl-entry";
      row.dataset.entry = String(e);
      row.dataset.colour = entry.colour;
      row.dataset.hidden = String(this.hidden.has(e));
      row.title = "Click to hide or show";
      const swatch = document.createElement("span");
      swatch.className = "rl-swatch";
      swatch.style.background = entry.colour;
      const name = document.createElement("span");
      name.className = "rl-name";
      name.textContent = `${entry.name} (${entry.count.toLocaleString("en-US")})`;
      row.append(swatch, name);
      row.addEventListener("click", () => {
        this.hidden.has(e) ? this.hidden.delete(e) : this.hidden.add(e);
        row.dataset.hidden = String(this.hidden.has(e));
        this.tables = lookupTables(this.colours, this.hidden);
        this.render();
      });
      box.append(row);
    });
  }

  // ------------------------------------------------------------ coordinates

  pageToData(x, y) {
    const rect = this.el.overlay.getBoundingClientRect();
    const [W, H] = this.renderer.size;
    return [(x - rect.left - W / 2) / this.view.s + this.view.cx, this.view.cy - (y - rect.top - H / 2) / this.view.s];
  }

  dataToPage(x, y) {
    const rect = this.el.overlay.getBoundingClientRect();
    const [W, H] = this.renderer.size;
    return [rect.left + (x - this.view.cx) * this.view.s + W / 2, rect.top + H / 2 - (y - this.view.cy) * this.view.s];
  }

  // The page position of point i's pixel centre (where the renderers draw it).
  pagePoint(i) {
    const rect = this.el.overlay.getBoundingClientRect();
    const [W, H] = this.renderer.size;
    const fx = (this.points.xy[2 * i] - this.view.cx) * this.view.s + W / 2;
    const fy = H / 2 - (this.points.xy[2 * i + 1] - this.view.cy) * this.view.s;
    return { x: rect.left + Math.floor(fx) + 0.5, y: rect.top + Math.floor(fy) + 0.5, inView: fx >= 0 && fx < W && fy >= 0 && fy < H };
  }

  visible(i) {
    return this.tables.lut[this.colours.codes[i] * 4 + 3] !== 0;
  }

  nearest(x, y) {
    if (!this.grid) this.grid = buildGrid(this.points.xy, this.points.n, this.points.bounds);
    const [dx, dy] = this.pageToData(x, y);
    const r = HIT_PX / this.view.s;
    const [ca, cb, ra, rb] = cellRange(this.grid, dx - r, dx + r, dy - r, dy + r);
    const { starts, order, side } = this.grid;
    const xy = this.points.xy;
    let best = -1, bestD = r * r;
    for (let row = ra; row <= rb; row++)
      for (let col = ca; col <= cb; col++) {
        const c = row * side + col;
        for (let k = starts[c]; k < starts[c + 1]; k++) {
          const i = order[k];
          const ex = xy[2 * i] - dx, ey = xy[2 * i + 1] - dy;
          const d = ex * ex + ey * ey;
          if (d <= bestD && this.visible(i)) { best = i; bestD = d; }
        }
      }
    return best;
  }

  // Points whose float32 coordinates lie in [xa, xb] x [ya, yb] (and, for a lasso, inside the polygon).
  collect(xa, xb, ya, yb, polygon) {
    if (!this.grid) this.grid = buildGrid(this.points.xy, this.points.n, this.points.bounds);
    const [ca, cb, ra, rb] = cellRange(this.grid, xa, xb, ya, yb);
    const { starts, order, side } = this.grid;
    const xy = this.points.xy;
    let out = new Uint32Array(1024), m = 0;
    for (let row = ra; row <= rb; row++)
      for (let col = ca; col <= cb; col++) {
        const c = row * side + col;
        for (let k = starts[c]; k < starts[c + 1]; k++) {
          const i = order[k];
          const x = xy[2 * i], y = xy[2 * i + 1];
          if (x < xa || x > xb || y < ya || y > yb || !this.visible(i)) continue;
          if (polygon && !insidePolygon(polygon, x, y)) continue;
          if (m === out.length) { const bigger = new Uint32Array(m * 2); bigger.set(out); out = bigger; }
          out[m++] = i;
        }
      }
    return out.slice(0, m).sort();
  }

  // ------------------------------------------------------------ selection

  select(indices, kind, detail) {
    this.selection = indices;
    const mask = new Uint8Array(this.points.n);
    for (let k = 0; k < indices.length; k++) mask[indices[k]] = 1;
    this.selectionMask = mask;
    this.lastSelection = { kind, ...detail };
    this.render();
    this.callbacks.setStateValue("selection", {
      points: this.pointsId, kind, count: indices.length, indices: toBase64(indices), ...detail,
    });
  }

  clearSelection(tell = true) {
    const had = this.selection !== null;
    this.selection = null;
    this.selectionMask = null;
    if (tell && had) {
      this.render();
      this.callbacks.setStateValue("selection", null);
    }
  }

  // ------------------------------------------------------------ events

  wire() {
    const overlay = this.el.overlay;
    this.el.bar.addEventListener("click", (ev) => {
      const button = ev.target.closest("button");
      if (!button) return;
      if (button.dataset.mode) {
        this.mode = button.dataset.mode;
        for (const b of this.el.bar.querySelectorAll("button[data-mode]")) b.setAttribute("aria-pressed", String(b === button));
      } else if (button.dataset.act === "reset") this.resetView();
      else if (button.dataset.act === "clear") this.clearSelection();
    });
    overlay.addEventListener("wheel", (ev) => {
      if (!this.view) return;
      ev.preventDefault();
      const [dx, dy] = this.pageToData(ev.clientX, ev.clientY);
      const factor = Math.exp(-ev.deltaY * 0.0015);
      this.view.s *= factor;
      this.view.cx = dx - (dx - this.view.cx) / factor;
      this.view.cy = dy - (dy - this.view.cy) / factor;
      G.views.set(this.pointsId, this.view);
      this.hideTip();
      this.render();
    }, { passive: false });
    overlay.addEventListener("dblclick", () => this.view && this.resetView());
    overlay.addEventListener("pointerdown", (ev) => {
      if (!this.view || ev.button !== 0) return;
      overlay.setPointerCapture(ev.pointerId);
      this.drag = { x: ev.clientX, y: ev.clientY, moved: false, path: [[ev.clientX, ev.clientY]], view: { ...this.view } };
    });
    overlay.addEventListener("pointermove", (ev) => this.onMove(ev));
    overlay.addEventListener("pointerup", (ev) => this.onUp(ev));
    overlay.addEventListener("pointerleave", () => this.hideTip());
    new ResizeObserver(() => {
      if (!this.renderer || !this.args) return;
      this.resize();
      this.render();
    }).observe(this.el.plot);
  }

  onMove(ev) {
    const drag = this.drag;
    if (!drag) return this.hover(ev);
    const ddx = ev.clientX - drag.x, ddy = ev.clientY - drag.y;
    if (Math.abs(ddx) + Math.abs(ddy) > 3) drag.moved = true;
    if (!drag.moved) return;
    this.hideTip();
    if (this.mode === "pan") {
      this.view.cx = drag.view.cx - ddx / this.view.s;
      this.view.cy = drag.view.cy + ddy / this.view.s;
      G.views.set(this.pointsId, this.view);
      this.render();
      return;
    }
    drag.path.push([ev.clientX, ev.clientY]);
    this.drawRubberBand();
  }

  onUp(ev) {
    const drag = this.drag;
    this.drag = null;
    this.overlayCtx.clearRect(0, 0, this.el.overlay.width, this.el.overlay.height);
    if (!drag || !this.view) return;
    if (!drag.moved) {
      const i = this.nearest(ev.clientX, ev.clientY);
      if (i >= 0) this.select(Uint32Array.of(i), "click", {});
      return;
    }
    if (this.mode === "box") {
      const [xa, ya] = this.pageToData(drag.x, drag.y);
      const [xb, yb] = this.pageToData(ev.clientX, ev.clientY);
      const box = [Math.min(xa, xb), Math.max(xa, xb), Math.min(ya, yb), Math.max(ya, yb)];
      this.select(this.collect(...box), "box", { box });
    } else if (this.mode === "lasso" && drag.path.length > 2) {
      const polygon = drag.path.map(([x, y]) => this.pageToData(x, y));
      const xs = polygon.map((p) => p[0]), ys = polygon.map((p) => p[1]);
      this.select(this.collect(Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys), polygon), "lasso", { polygon });
    }
  }

  drawRubberBand() {
    const ctx = this.overlayCtx;
    const rect = this.el.overlay.getBoundingClientRect();
    ctx.clearRect(0, 0, this.el.overlay.width, this.el.overlay.height);
    ctx.strokeStyle = "#3f3f46";
    ctx.fillStyle = "rgba(63,63,70,0.08)";
    ctx.setLineDash([4, 3]);
    const path = this.drag.path.map(([x, y]) => [x - rect.left, y - rect.top]);
    ctx.beginPath();
    if (this.mode === "box") {
      const [a, b] = [path[0], path[path.length - 1]];
      ctx.rect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    } else {
      path.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
    }
    ctx.fill();
    ctx.stroke();
  }

  hover(ev) {
    if (!this.view || !this.points) return;
    const i = this.nearest(ev.clientX, ev.clientY);
    if (i < 0) return this.hideTip();
    const tip = this.el.tip;
    const meta = this.colours.meta;
    const value = meta.mode === "values" ? this.colours.values[i] : meta.names[this.colours.codes[i]];
    const shown = typeof value === "number" ? (Number.isFinite(value) ? value.toLocaleString("en-US") : "unknown") : value;
    tip.replaceChildren();
    const name = document.createElement("div");
    name.textContent = this.nameOf(i);
    name.style.fontWeight = "600";
    const detail = document.createElement("div");
    detail.textContent = `${meta.title}: ${shown}`;
    tip.append(name, detail);
    tip.dataset.index = String(i);
    const rect = this.el.plot.getBoundingClientRect();
    const p = this.pagePoint(i);
    tip.style.display = "block";
    const left = p.x - rect.left + 12;
    tip.style.left = `${Math.min(left, rect.width - 200)}px`;
    tip.style.top = `${p.y - rect.top + 12}px`;
    this.hovered = i;
  }

  hideTip() {
    this.el.tip.style.display = "none";
    this.hovered = -1;
  }
}

function insidePolygon(poly, x, y) {
  let inside = false;
  for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
    const [xa, ya] = poly[a], [xb, yb] = poly[b];
    if (ya > y !== yb > y && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inside = !inside;
  }
  return inside;
}

function toBase64(indices) {
  const bytes = new Uint8Array(indices.buffer, indices.byteOffset, indices.byteLength);
  let text = "";
  for (let k = 0; k < bytes.length; k += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(k, k + 0x8000));
  return btoa(text);
}

export default function (component) {
  const { data, parentElement, setStateValue, setTriggerValue } = component;
  let map = INSTANCES.get(parentElement);
  if (!map) {
    map = new BigMap(parentElement);
    INSTANCES.set(parentElement, map);
  }
  if (data && typeof data === "object") {
    map.update(data, { setStateValue, setTriggerValue }).catch((err) => {
      map.el.status.textContent = `The map could not be drawn: ${err.message}`;
      console.error(err);
    });
  }
  const gen = map.gen;
  return () => {
    // Called when the element leaves the page; a stale call from an earlier update does nothing.
    if (gen !== map.gen) return;
    INSTANCES.delete(parentElement);
    if (data && data.name && G.maps.get(data.name) === map) G.maps.delete(data.name);
  };
}
