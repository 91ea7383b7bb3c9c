// organizer serve: search (text, or a dropped/pasted/chosen picture), the cluster map,
// copying duplicate lists, and (with --allow-changes) the duplicates page's actions. Served from the server itself (no CDN); the page's CSP allows no
// inline script. Every file name is put in the page as text, never as HTML, and in a <bdi>:
// a right-to-left name must not reorder the text around it (the server escapes the
// invisible controls within it).
"use strict";

(function () {
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function card(r) {
    // A file the server will not serve gets a tile saying why, not a broken picture.
    var picture = r.not_shown
      ? el("span", { class: "unshown", title: r.not_shown, text: r.not_shown })
      : el("img", { src: "/thumb/" + r.image_id, alt: "", loading: "lazy" });
    return el("a", { class: "card", href: "/view/" + r.image_id, title: r.path }, [
      picture,
      el("span", { class: "meta" }, [
        el("span", { class: "score", text: r.score.toFixed(3) }),
        el("bdi", { class: "name", text: r.path }),
      ]),
      el("bdi", { class: "facts", text: facts(r) }),
    ]);
  }

  // When and where, as far as known: "22 Oct 2008 · Arezzo, Tuscany, Italy".
  function facts(r) {
    var parts = [];
    if (r.taken) {
      var day = new Date(r.taken.slice(0, 10) + "T00:00:00Z");
      parts.push(day.toLocaleDateString(undefined, { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" }));
    }
    if (r.place) { parts.push(r.place); }
    return parts.join(" · ");
  }

  // The filter fields of the search page, as query parameters ("" when none is filled).
  var FILTERS = ["after", "before", "place", "camera", "near", "sort"];
  function filterParams() {
    var out = "";
    FILTERS.forEach(function (name) {
      var field = document.querySelector("[name=" + name + "][form=search]");
      var value = field ? field.value.trim() : "";
      if (value && !(name === "sort" && value === "score")) {
        out += "&" + name + "=" + encodeURIComponent(value);
      }
    });
    return out;
  }

  // -- search ------------------------------------------------------------------------------
  function setUpSearch() {
    var form = document.getElementById("search");
    if (!form) { return; }
    var input = document.getElementById("q");
    var results = document.getElementById("results");
    var message = document.getElementById("message");
    var more = document.getElementById("more");
    var page = parseInt(results.getAttribute("data-page"), 10) || 24;
    var current = null;  // {kind: "text", q} or {kind: "image", blob, name}
    var shown = 0;

    // Text, with the query (words or an uploaded file's name) isolated in a <bdi>.
    function say(text, query, after) {
      message.replaceChildren(text);
      if (query !== undefined) { message.append(el("bdi", { text: query }), after || ""); }
    }

    function request(offset) {
      var params = "n=" + page + "&offset=" + offset + filterParams();
      if (current.kind === "text") {
        return fetch("/api/search?q=" + encodeURIComponent(current.q) + "&" + params);
      }
      var body = new FormData();
      body.append("image", current.blob, current.name);
      return fetch("/api/search?" + params, { method: "POST", body: body });
    }

    function run(offset) {
      if (!offset) { results.replaceChildren(); shown = 0; }
      more.hidden = true;
      say(offset ? "Loading more…" : "Searching…");
      var started = performance.now();
      request(offset).then(function (response) {
        // Errors are one line of JSON from the app, plain text from the front door (401).
        return response.text().then(function (body) {
          var data;
          try { data = JSON.parse(body); } catch (e) {
            data = { error: body.trim() || "The server answered " + response.status + "." };
          }
          return { ok: response.ok, data: data };
        });
      }).then(function (answer) {
        if (!answer.ok) { say(answer.data.error || "The search failed."); return; }
        answer.data.results.forEach(function (r) { results.appendChild(card(r)); });
        shown += answer.data.results.length;
        var ms = Math.round(performance.now() - started);
        if (shown) {
          say(shown + " results for ", answer.data.query, " (" + ms + " ms)");
        } else {
          say("Nothing found for ", answer.data.query, ".");
        }
        more.hidden = answer.data.results.length < page;
      }).catch(function () { say("The server cannot be reached."); });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var q = input.value.trim();
      if (!q) { say("Type what you look for."); return; }
      current = { kind: "text", q: q };
      history.replaceState(null, "", "/?q=" + encodeURIComponent(q) + filterParams());
      run(0);
    });
    more.addEventListener("click", function () { if (current) { run(shown); } });

    function byPicture(file) {
      if (!file || !/^image\//.test(file.type || "image/")) { say("That is not a picture."); return; }
      current = { kind: "image", blob: file, name: file.name || "pasted image" };
      input.value = "";
      history.replaceState(null, "", "/");
      run(0);
    }
    document.getElementById("image").addEventListener("change", function (event) {
      byPicture(event.target.files[0]);
    });
    document.addEventListener("dragover", function (event) {
      event.preventDefault(); document.body.classList.add("dropping");
    });
    document.addEventListener("dragleave", function () { document.body.classList.remove("dropping"); });
    document.addEventListener("drop", function (event) {
      event.preventDefault(); document.body.classList.remove("dropping");
      if (event.dataTransfer.files.length) { byPicture(event.dataTransfer.files[0]); }
    });
    document.addEventListener("paste", function (event) {
      var items = (event.clipboardData || {}).files || [];
      if (items.length) { event.preventDefault(); byPicture(items[0]); }
    });
    if (input.value.trim()) { form.requestSubmit(); }
  }

  // -- the cluster map ---------------------------------------------------------------------
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"];
  var HIT = 10;  // px

  function setUpMap() {
    var canvas = document.getElementById("map");
    if (!canvas) { return; }
    var tip = document.getElementById("map-tip");
    var message = document.getElementById("map-message");
    var ctx = canvas.getContext("2d");
    var points = [], labels = {}, thumbs = {};
    var view = { scale: 1, x: 0, y: 0 };  // screen = (p * size * scale) + offset
    var drag = null, hovered = -1, width = 0, height = 0, size = 0;

    function resize() {
      var ratio = window.devicePixelRatio || 1;
      width = canvas.clientWidth; height = canvas.clientHeight;
      canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      size = Math.min(width, height) - 2 * HIT;
      draw();
    }
    function screen(p) {  // world (the map at scale 1, in CSS px) -> the canvas
      var left = (width - size) / 2, top = (height - size) / 2;
      return [(left + p[1] * size) * view.scale + view.x, (top + (1 - p[2]) * size) * view.scale + view.y];
    }
    function thumb(id) {
      if (!thumbs[id]) {
        var image = new Image();
        image.onload = function () { draw(); };
        image.src = "/thumb/" + id;
        thumbs[id] = image;
      }
      return thumbs[id];
    }
    function draw() {
      ctx.clearRect(0, 0, width, height);
      var side = Math.min(96, 6 * view.scale), showPictures = view.scale >= 4, drawn = 0;
      points.forEach(function (p, i) {
        var s = screen(p);
        if (s[0] < -side || s[1] < -side || s[0] > width + side || s[1] > height + side) { return; }
        if (showPictures && drawn < 400) {
          var image = thumb(p[0]);
          drawn += 1;
          if (image.complete && image.naturalWidth) {
            ctx.drawImage(image, s[0] - side / 2, s[1] - side / 2, side, side);
            ctx.strokeStyle = PALETTE[(p[3] - 1) % PALETTE.length];
            ctx.lineWidth = 2;
            ctx.strokeRect(s[0] - side / 2, s[1] - side / 2, side, side);
            return;
          }
        }
        ctx.fillStyle = PALETTE[(p[3] - 1) % PALETTE.length];
        ctx.beginPath();
        ctx.arc(s[0], s[1], i === hovered ? 6 : 3.5, 0, 2 * Math.PI);
        ctx.fill();
      });
    }
    function nearest(x, y) {
      var best = -1, bestD = HIT * HIT;
      var radius = view.scale >= 4 ? Math.max(HIT, Math.min(96, 6 * view.scale) / 2) : HIT;
      bestD = radius * radius;
      points.forEach(function (p, i) {
        var s = screen(p), d = (s[0] - x) * (s[0] - x) + (s[1] - y) * (s[1] - y);
        if (d <= bestD) { best = i; bestD = d; }
      });
      return best;
    }
    function show(i, x, y) {
      hovered = i;
      if (i < 0) { tip.hidden = true; draw(); return; }
      var p = points[i];
      var picture = tip.querySelector("img");
      picture.hidden = false;
      picture.onerror = function () { picture.hidden = true; };  // a file not served
      picture.src = "/thumb/" + p[0];
      tip.querySelector("span").textContent = p[3] + " · " + (labels[p[3]] || "unnamed");
      tip.hidden = false;
      tip.style.left = Math.min(x + 14, width - 190) + "px";
      tip.style.top = Math.min(y + 14, height - 200) + "px";
      draw();
    }
    function local(event) {
      var r = canvas.getBoundingClientRect();
      return [event.clientX - r.left, event.clientY - r.top];
    }
    canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      var at = local(event), factor = event.deltaY < 0 ? 1.25 : 0.8;
      var scale = Math.max(1, Math.min(64, view.scale * factor));
      // the world point under the pointer stays under it
      view.x = at[0] - (at[0] - view.x) * (scale / view.scale);
      view.y = at[1] - (at[1] - view.y) * (scale / view.scale);
      view.scale = scale;
      if (scale === 1) { view.x = 0; view.y = 0; }
      draw();
    }, { passive: false });
    canvas.addEventListener("pointerdown", function (event) {
      drag = { at: local(event), x: view.x, y: view.y, moved: false };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", function (event) {
      var at = local(event);
      if (drag) {
        var dx = at[0] - drag.at[0], dy = at[1] - drag.at[1];
        if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; canvas.classList.add("panning"); }
        view.x = drag.x + dx; view.y = drag.y + dy;
        draw();
        return;
      }
      show(nearest(at[0], at[1]), at[0], at[1]);
    });
    canvas.addEventListener("pointerup", function (event) {
      var wasDrag = drag && drag.moved;
      drag = null; canvas.classList.remove("panning");
      if (!wasDrag) {
        var at = local(event), i = nearest(at[0], at[1]);
        if (i >= 0) { window.location.href = "/view/" + points[i][0]; }
      }
    });
    canvas.addEventListener("pointerleave", function () { if (!drag) { show(-1); } });
    window.addEventListener("resize", resize);

    fetch("/api/map?run=" + encodeURIComponent(canvas.getAttribute("data-run")))
      .then(function (response) { return response.json(); })
      .then(function (data) {
        if (data.error) { message.textContent = data.error; return; }
        points = data.points;
        data.clusters.forEach(function (c) { labels[c.number] = c.label; });
        message.textContent = points.length + " images · scroll to zoom, drag to pan, " +
          "zoom in to see the pictures, click one to open it";
        resize();
      })
      .catch(function () { message.textContent = "The map could not be loaded."; });
    resize();
  }

  // -- duplicates: copy the others' paths ---------------------------------------------------
  function setUpCopy() {
    document.querySelectorAll("button.copy").forEach(function (button) {
      button.addEventListener("click", function () {
        var text = button.getAttribute("data-paths");
        navigator.clipboard.writeText(text).then(function () {
          button.textContent = "Copied " + text.split("\n").length + " paths";
        }, function () { button.textContent = "Copying is not allowed here"; });
      });
    });
  }

  // -- duplicates: actions (only on a server started with --allow-changes) -----------------
  var NOTICE = "organizer-notice";

  // A change: a JSON POST with the page's CSRF token. The answer's JSON, or its error as one
  // line (JSON from the app, plain text from the front door).
  function change(url, body) {
    var token = document.querySelector("meta[name=csrf-token]").getAttribute("content");
    return fetch(url, {
      method: "POST",
      // The pages' Referrer-Policy is no-referrer, under which the Fetch standard sends
      // "Origin: null" on a POST (Chromium sends the origin regardless), and the server
      // refuses a change that does not name its origin: this same-origin request may.
      referrerPolicy: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": token },
      body: JSON.stringify(body || {}),
    }).then(function (response) {
      return response.text().then(function (text) {
        var data;
        try { data = JSON.parse(text); } catch (e) {
          data = { error: text.trim() || "The server answered " + response.status + "." };
        }
        if (!response.ok) { throw new Error(data.error || "The server answered " + response.status + "."); }
        return data;
      });
    }, function () { throw new Error("The server cannot be reached."); });
  }

  // Reload the page to show the groups as the change left them, saying what was done (a
  // clean-up that can be undone is said by the page itself, with its Undo button).
  function doneThen(data) {
    if (!data.undo) {
      try { sessionStorage.setItem(NOTICE, data.done || "Done."); } catch (e) { /* private mode */ }
    }
    window.location.reload();
  }

  function setUpChanges() {
    var notice = document.getElementById("notice");
    if (notice) {
      var said = null;
      try { said = sessionStorage.getItem(NOTICE); sessionStorage.removeItem(NOTICE); } catch (e) { /* none */ }
      if (said) { notice.textContent = said; notice.hidden = false; }
    }
    if (!document.querySelector("meta[name=csrf-token]")) { return; }
    var undo = document.getElementById("undo");
    if (undo) {
      undo.addEventListener("click", function () {
        var problem = undo.parentNode.querySelector(".problem");
        undo.disabled = true;
        change("/api/clean-ups/undo").then(doneThen, function (error) {
          problem.textContent = error.message;
          problem.hidden = false;
          undo.disabled = false;
        });
      });
    }
    document.querySelectorAll(".dupes [data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        var group = button.closest(".dupes");
        var problem = group.querySelector(".problem");
        var action = button.getAttribute("data-action");
        var body = {};
        if (action === "keeper") { body.image_id = parseInt(button.getAttribute("data-image"), 10); }
        if (action === "trash") {
          var n = parseInt(button.getAttribute("data-count"), 10);
          var files = n === 1 ? "1 file" : n + " files";
          if (!window.confirm("Move " + files + " of this group to the trash? The keeper stays; Undo puts them back.")) { return; }
        }
        var buttons = group.querySelectorAll("button[data-action]");
        buttons.forEach(function (b) { b.disabled = true; });
        problem.hidden = true;
        change("/api/duplicates/" + group.getAttribute("data-group") + "/" + action, body)
          .then(doneThen, function (error) {
            problem.textContent = error.message;
            problem.hidden = false;
            buttons.forEach(function (b) { b.disabled = false; });
          });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpSearch();
    setUpMap();
    setUpCopy();
    setUpChanges();
  });
})();
