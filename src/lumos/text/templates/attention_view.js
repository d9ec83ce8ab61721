/* lumos attention views (head view, model view). No network, no innerHTML: every token is set as
   textContent, so user text is shown, never interpreted. Data: {kind, tokens, attention[layer][head]
   [query][key], layer, heads (selected), colors, title}. */
function lumosAttentionView(root, data) {
  "use strict";
  var ROW = 20, LINES_W = 180, THUMB = 64;
  var DPR = (typeof window !== "undefined" && window.devicePixelRatio) || 1;
  var doc = root.ownerDocument || document;
  var n = data.tokens.length, L = data.attention.length, H = L ? data.attention[0].length : 0;
  /* weights travel as integers in units of 1 / data.scale */
  for (var l0 = 0; l0 < L; l0++) {
    for (var h0 = 0; h0 < H; h0++) {
      var M0 = data.attention[l0][h0];
      for (var q0 = 0; q0 < n; q0++) {
        for (var k0 = 0; k0 < n; k0++) { M0[q0][k0] = M0[q0][k0] / data.scale; }
      }
    }
  }

  function el(tag, cls, text) {
    var e = doc.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function color(h) { return data.colors[h % data.colors.length]; }
  function rgba(hex, a) {
    var v = parseInt(hex.slice(1), 16);
    return "rgba(" + ((v >> 16) & 255) + "," + ((v >> 8) & 255) + "," + (v & 255) + "," + a + ")";
  }

  /* Two columns of tokens (queries left, keys right) joined by lines of opacity = weight. */
  function lineView(parent, getLayer, getHeads) {
    var box = el("div", "la-lines");
    var left = el("div", "la-col la-left"), right = el("div", "la-col la-right");
    var canvas = doc.createElement("canvas"), height = Math.max(n, 1) * ROW;
    canvas.width = LINES_W * DPR; canvas.height = height * DPR;  /* sharp on dense screens */
    canvas.style.width = LINES_W + "px"; canvas.style.height = height + "px";
    var lt = [], rt = [];
    for (var i = 0; i < n; i++) {
      var a = el("div", "la-tok", data.tokens[i]), b = el("div", "la-tok", data.tokens[i]);
      a.style.height = b.style.height = a.style.lineHeight = b.style.lineHeight = ROW + "px";
      a.setAttribute("data-index", String(i)); b.setAttribute("data-index", String(i));
      lt.push(a); rt.push(b); left.appendChild(a); right.appendChild(b);
    }
    box.appendChild(left); box.appendChild(canvas); box.appendChild(right);
    parent.appendChild(box);
    var focus = null;  /* null, {side: "query"|"key", index} */

    function draw() {
      var ctx = canvas.getContext("2d"), heads = getHeads(), A = data.attention[getLayer()];
      ctx.setTransform(DPR, 0, 0, DPR, 0, 0);
      ctx.clearRect(0, 0, LINES_W, height);
      ctx.lineWidth = 2;
      for (var k = 0; k < n; k++) { lt[k].style.backgroundColor = ""; rt[k].style.backgroundColor = ""; }
      for (var hi = 0; hi < heads.length; hi++) {
        var h = heads[hi], M = A[h];
        ctx.strokeStyle = color(h);
        for (var q = 0; q < n; q++) {
          if (focus && focus.side === "query" && focus.index !== q) { continue; }
          for (var key = 0; key < n; key++) {
            if (focus && focus.side === "key" && focus.index !== key) { continue; }
            var w = M[q][key];
            if (!(w > 0)) { continue; }
            ctx.globalAlpha = Math.min(1, w);
            ctx.beginPath();
            ctx.moveTo(0, q * ROW + ROW / 2);
            ctx.lineTo(LINES_W, key * ROW + ROW / 2);
            ctx.stroke();
          }
        }
      }
      ctx.globalAlpha = 1;
      if (focus) {  /* shade the other column by the mean weight over the selected heads */
        var other = focus.side === "query" ? rt : lt;
        (focus.side === "query" ? lt : rt)[focus.index].style.backgroundColor = "rgba(0,0,0,0.12)";
        for (var t = 0; t < n; t++) {
          var s = 0;
          for (var hj = 0; hj < heads.length; hj++) {
            var row = A[heads[hj]];
            s += focus.side === "query" ? row[focus.index][t] : row[t][focus.index];
          }
          if (heads.length && s > 0) {
            var c = heads.length === 1 ? color(heads[0]) : "#444444";
            other[t].style.backgroundColor = rgba(c, Math.min(1, s / heads.length).toFixed(3));
            other[t].setAttribute("title", (s / heads.length).toFixed(4));
          } else { other[t].removeAttribute("title"); }
        }
      } else {
        for (var u = 0; u < n; u++) { lt[u].removeAttribute("title"); rt[u].removeAttribute("title"); }
      }
    }
    function hover(side, i) {
      return function () { focus = i === null ? null : {side: side, index: i}; draw(); };
    }
    for (var j = 0; j < n; j++) {
      lt[j].addEventListener("mouseenter", hover("query", j));
      rt[j].addEventListener("mouseenter", hover("key", j));
    }
    box.addEventListener("mouseleave", hover(null, null));
    draw();
    return {draw: draw, box: box, left: lt, right: rt, canvas: canvas};
  }

  root.appendChild(el("div", "la-title", data.title));

  if (data.kind === "head") {
    var layer = data.layer, selected = {};
    for (var s0 = 0; s0 < data.heads.length; s0++) { selected[data.heads[s0]] = true; }
    var controls = el("div", "la-controls");
    var lab = el("label", null, "Layer ");
    var select = doc.createElement("select");
    for (var l = 0; l < L; l++) {
      var opt = el("option", null, String(l));
      opt.value = String(l);
      if (l === layer) { opt.selected = true; }
      select.appendChild(opt);
    }
    lab.appendChild(select); controls.appendChild(lab);
    controls.appendChild(el("span", "la-label", "Heads:"));
    var boxes = [];
    for (var h = 0; h < H; h++) {
      var wrap = el("label", "la-head");
      var cb = doc.createElement("input");
      cb.type = "checkbox"; cb.checked = !!selected[h]; cb.setAttribute("data-head", String(h));
      var sw = el("span", "la-swatch");
      sw.style.backgroundColor = color(h);
      wrap.appendChild(cb); wrap.appendChild(sw); wrap.appendChild(el("span", null, String(h)));
      controls.appendChild(wrap); boxes.push(cb);
    }
    var all = el("button", null, "all"), none = el("button", null, "none");
    controls.appendChild(all); controls.appendChild(none);
    root.appendChild(controls);
    root.appendChild(el("div", "la-note", "Left: query tokens; right: the tokens they attend to. " +
      "Line opacity = attention weight; colour = head. Hover a token to see only its lines."));
    var heads = function () {
      var out = [];
      for (var k = 0; k < H; k++) { if (boxes[k].checked) { out.push(k); } }
      return out;
    };
    var view = lineView(root, function () { return layer; }, heads);
    select.addEventListener("change", function () { layer = parseInt(select.value, 10); view.draw(); });
    for (var b = 0; b < H; b++) { boxes[b].addEventListener("change", view.draw); }
    all.addEventListener("click", function () { for (var k = 0; k < H; k++) { boxes[k].checked = true; } view.draw(); });
    none.addEventListener("click", function () { for (var k = 0; k < H; k++) { boxes[k].checked = false; } view.draw(); });
    return {kind: "head", view: view, select: select, boxes: boxes};
  }

  /* model view: layers x heads thumbnails (query rows, key columns), click to enlarge */
  root.appendChild(el("div", "la-note", "Rows: layers; columns: heads. Each thumbnail is the " +
    "attention map (query rows, key columns; darker = more weight). Click one to enlarge it."));
  var grid = el("div", "la-grid");
  var cell = Math.max(1, Math.floor(THUMB / Math.max(n, 1))), side = cell * Math.max(n, 1);
  grid.style.gridTemplateColumns = "auto repeat(" + H + ", " + (side + 2) + "px)";
  grid.appendChild(el("span", "la-label", ""));
  for (var hh = 0; hh < H; hh++) { grid.appendChild(el("span", "la-label", "head " + hh)); }
  var detail = el("div", "la-detail"), thumbs = [], current = null;
  function open(l, h, cv) {
    while (detail.firstChild) { detail.removeChild(detail.firstChild); }
    for (var k = 0; k < thumbs.length; k++) { thumbs[k].className = ""; }
    if (current && current[0] === l && current[1] === h) { current = null; return null; }
    current = [l, h]; cv.className = "la-selected";
    var head = el("div", "la-controls");
    head.appendChild(el("span", "la-title", "layer " + l + ", head " + h));
    var close = el("button", null, "close");
    close.addEventListener("click", function () { open(l, h, cv); });
    head.appendChild(close);
    detail.appendChild(head);
    return lineView(detail, function () { return l; }, function () { return [h]; });
  }
  for (var ll = 0; ll < L; ll++) {
    grid.appendChild(el("span", "la-label la-row", "layer " + ll));
    for (var h2 = 0; h2 < H; h2++) {
      var cv = doc.createElement("canvas");
      cv.width = side; cv.height = side;  /* whole pixels per cell: no seams */
      cv.setAttribute("data-layer", String(ll)); cv.setAttribute("data-head", String(h2));
      cv.setAttribute("title", "layer " + ll + ", head " + h2);
      var ctx = cv.getContext("2d"), M = data.attention[ll][h2];
      ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, side, side);
      ctx.fillStyle = color(h2);
      for (var q = 0; q < n; q++) {
        for (var key = 0; key < n; key++) {
          if (!(M[q][key] > 0)) { continue; }
          ctx.globalAlpha = Math.min(1, M[q][key]);
          ctx.fillRect(key * cell, q * cell, cell, cell);
        }
      }
      ctx.globalAlpha = 1;
      cv.addEventListener("click", (function (l, h, c) {
        return function () { return open(l, h, c); };
      })(ll, h2, cv));
      thumbs.push(cv); grid.appendChild(cv);
    }
  }
  root.appendChild(grid); root.appendChild(detail);
  return {kind: "model", thumbs: thumbs, open: open};
}
