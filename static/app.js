// jumpscope pages: the interactive parts (everything also works without this file).
// Data from the server or the model is only ever inserted with textContent, never as HTML.
(function () {
  "use strict";

  // The same single-hue scale as app/web/tokens.py (ColorBrewer Oranges), quantised to 100 levels.
  var STOPS = [[255, 245, 235], [254, 230, 206], [253, 208, 162], [253, 174, 107], [253, 141, 60],
    [241, 105, 19], [217, 72, 1], [166, 54, 3], [127, 39, 4]];
  var DARK_FROM = 0.6;
  var RATER_COOKIE = "jumpscope_rater";
  var TOKEN_COOKIE = "jumpscope_token";

  function colour(fraction) {
    var t = Math.round(Math.min(Math.max(fraction, 0), 1) * 100) / 100;
    var x = t * (STOPS.length - 1);
    var i = Math.min(Math.floor(x), STOPS.length - 2);
    var f = x - i;
    var hex = "#";
    for (var c = 0; c < 3; c++) {
      var v = Math.round(STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f);
      hex += (v < 16 ? "0" : "") + v.toString(16);
    }
    return hex;
  }

  function fmt(v) {
    return v === 0 ? "0" : String(Number(v.toPrecision(3)));
  }

  function display(token) {
    if (!token) return "\u2205";
    return token.replace(/\r/g, "").replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
  }

  // Spans for one text, coloured like the server-rendered examples.
  function renderTokens(container, tokens, values, scale, special) {
    container.textContent = "";
    var best = -1;
    for (var i = 0; i < values.length; i++) if (values[i] > 0 && (best < 0 || values[i] > values[best])) best = i;
    tokens.forEach(function (token, i) {
      var v = values[i] || 0;
      var span = document.createElement("span");
      span.className = "t";
      if (i === best) span.className += " max";
      if (special && special[i]) span.className += " sp";
      if (v > 0) {
        span.style.background = colour(v / scale);
        if (v / scale >= DARK_FROM) span.className += " hi";
      }
      span.title = fmt(v);
      span.textContent = display(token);
      container.appendChild(span);
    });
  }

  function getCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) {
        try { return decodeURIComponent(parts[i].slice(eq + 1)); } catch (e) { return ""; }
      }
    }
    return "";
  }

  function setCookie(name, value) {
    var secure = location.protocol === "https:" ? "; secure" : "";
    document.cookie = name + "=" + encodeURIComponent(value) + "; path=/; max-age=31536000; samesite=lax" + secure;
  }

  function readJSON(response) {
    return response.text().then(function (text) {
      var body = {};
      try { body = JSON.parse(text); } catch (e) { body = { detail: text || response.statusText }; }
      return { ok: response.ok, status: response.status, body: body };
    });
  }

  // What the page scripts of single pages (textview.js, ...) share with this file.
  window.jumpscope = { colour: colour, fmt: fmt, display: display, readJSON: readJSON, DARK_FROM: DARK_FROM };

  // Short / full context switch, without a reload.
  var examples = document.getElementById("examples");
  var switches = document.querySelectorAll("[data-context]");
  function setContext(mode) {
    if (!examples) return;
    examples.classList.toggle("short", mode === "short");
    switches.forEach(function (a) { a.setAttribute("aria-pressed", a.dataset.context === mode ? "true" : "false"); });
    var url = new URL(location.href);
    url.searchParams.set("context", mode);
    history.replaceState(null, "", url.pathname + url.search + url.hash);
    // the queue's next item keeps the chosen context
    var form = document.getElementById("rate-form");
    var skip = document.getElementById("skip");
    if (form && form.dataset.next) {
      form.dataset.next = withContext(form.dataset.next, mode);
      form.elements.next.value = form.dataset.next;
    }
    if (skip) skip.href = withContext(skip.getAttribute("href"), mode);
  }
  function withContext(path, mode) {
    var url = new URL(path, location.href);
    if (mode === "full") url.searchParams.set("context", "full"); else url.searchParams.delete("context");
    return url.pathname + url.search;
  }
  switches.forEach(function (a) {
    a.addEventListener("click", function (event) { event.preventDefault(); setContext(a.dataset.context); });
  });

  // "Try your own text": the encode API, then the same highlighting.
  var tryForm = document.getElementById("try-form");
  if (tryForm) {
    var tryStatus = document.getElementById("try-status");
    var tryResult = document.getElementById("try-result");
    tryForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var text = tryForm.elements.text.value;
      if (!text.trim()) return;
      var index = parseInt(tryForm.dataset.index, 10);
      tryStatus.textContent = "Encoding\u2026 (the first request loads the model)";
      fetch(tryForm.dataset.api, {
        method: "POST", headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ text: text, features: [index] }), credentials: "same-origin"
      }).then(readJSON).then(function (res) {
        if (!res.ok) { tryStatus.textContent = "Could not encode: " + (res.body.detail || res.status); return; }
        var dense = (res.body.features || []).filter(function (d) { return d.index === index; })[0];
        var values = dense ? dense.values : res.body.tokens.map(function () { return 0; });
        var top = Math.max.apply(null, [0].concat(values));
        var scale = Math.max(parseFloat(tryForm.dataset.scale) || 1, top);
        renderTokens(tryResult, res.body.tokens, values, scale, res.body.special);
        tryStatus.textContent = res.body.tokens.length + " tokens; max " + fmt(top) + ".";
      }).catch(function (err) { tryStatus.textContent = "Could not encode: " + err; });
    });
  }

  // Rating: post JSON to the REST API (the form's own POST is the no-JS fallback).
  var rateForm = document.getElementById("rate-form");
  var startedAt = Date.now();
  if (rateForm) {
    var rateStatus = document.getElementById("rate-status");
    var buttons = rateForm.querySelectorAll('button[name="label"]');
    var tokenInput = rateForm.elements.token;
    var raterInput = rateForm.elements.rater;
    if (raterInput && raterInput.type !== "hidden" && !raterInput.value) raterInput.value = getCookie(RATER_COOKIE);
    rateForm.addEventListener("submit", function (event) {
      var label = event.submitter && event.submitter.value;
      if (!label) return;
      event.preventDefault();
      var shown = {};
      try { shown = JSON.parse(rateForm.elements.shown.value); } catch (e) { shown = {}; }
      if (examples) {
        shown.context = examples.classList.contains("short") ? "short" : "full";
        shown.context_radius = shown.context === "short" ? shown.context_radius || 8 : null;
      }
      var body = {
        label: label, note: rateForm.elements.note.value, study_id: rateForm.elements.study_id.value,
        blinded: rateForm.elements.blinded.value === "1", shown: shown, time_spent_ms: Date.now() - startedAt
      };
      var order = rateForm.elements.presentation_order.value;
      if (order !== "") body.presentation_order = parseInt(order, 10);
      var headers = { "Content-Type": "application/json", "Accept": "application/json" };
      if (rateForm.dataset.tokens === "1") {
        var token = tokenInput ? tokenInput.value.trim() : "";
        if (token) setCookie(TOKEN_COOKIE, token); else token = getCookie(TOKEN_COOKIE);
        if (token) headers.Authorization = "Bearer " + token;
      } else {
        var rater = raterInput ? raterInput.value.trim() : getCookie(RATER_COOKIE);
        if (rater) { body.rater = rater; setCookie(RATER_COOKIE, rater); }
      }
      buttons.forEach(function (b) { b.disabled = true; });
      rateStatus.textContent = "Saving\u2026";
      fetch(rateForm.dataset.api, {
        method: "POST", headers: headers, body: JSON.stringify(body), credentials: "same-origin"
      }).then(readJSON).then(function (res) {
        if (res.ok && rateForm.dataset.next) { location.assign(rateForm.dataset.next); return; }
        buttons.forEach(function (b) { b.disabled = false; });
        rateStatus.textContent = res.ok ? "Saved: " + res.body.label + " (as " + res.body.rater + ")."
          : "Not saved: " + (res.body.detail || res.status);
      }).catch(function (err) {
        buttons.forEach(function (b) { b.disabled = false; });
        rateStatus.textContent = "Not saved: " + err;
      });
    });
  }

  // The queue: y / m / n rate, s skips, c switches the context; typing in a field is left alone.
  if (document.body.dataset.page === "queue" && rateForm) {
    var keys = { y: "yes", m: "maybe", n: "no" };
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
      var target = event.target;
      var tag = target && target.tagName;
      if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable)) {
        if (event.key === "Escape") target.blur();
        return;
      }
      var key = event.key.toLowerCase();
      if (keys[key]) {
        var button = rateForm.querySelector('button[value="' + keys[key] + '"]');
        if (button && !button.disabled) { event.preventDefault(); button.click(); }
      } else if (key === "s") {
        var skip = document.getElementById("skip");
        if (skip) { event.preventDefault(); location.assign(skip.href); }
      } else if (key === "c" && examples) {
        event.preventDefault();
        setContext(examples.classList.contains("short") ? "full" : "short");
      }
    });
  }
})();
