// The text -> features page (templates/text.html): a token's features on hover or focus, the arrow
// keys along the tokens, and a summary feature's activation over the text, all without a reload.
// The page works without this file (it is one GET form); data from the server (the JSON block
// #text-data) and the model only ever goes in with textContent. Colours come from app.js.
(function () {
  "use strict";

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function init() {
    var island = document.getElementById("text-data");
    var box = document.getElementById("text-tokens");
    var panel = document.getElementById("token-panel");
    var form = document.getElementById("text-view");
    var js = window.jumpscope;
    if (!island || !box || !panel || !form || !js) return;
    var data;
    try { data = JSON.parse(island.textContent); } catch (e) { return; }
    var tokens = Array.prototype.slice.call(box.querySelectorAll("button.t"));
    var legend = document.getElementById("tokens-legend");
    var several = data.saes.length > 1;
    var pinned = null;
    var current = data.highlight;

    function replaceParams(changes) {
      var url = new URL(location.href);
      Object.keys(changes).forEach(function (key) {
        if (changes[key] === null) url.searchParams.delete(key); else url.searchParams.set(key, changes[key]);
      });
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }

    // A token's tooltip: its strongest features (per SAE when several), after the highlighted value.
    function featuresTitle(i) {
      return data.saes.map(function (sae) {
        var top = (sae.tokens[i] || []).slice(0, 3).map(function (fv) { return "#" + fv[0] + " " + js.fmt(fv[1] || 0); });
        var text = top.length ? top.join(" ") : "none active";
        return several ? sae.name + ": " + text : text;
      }).join(" | ");
    }

    function featureList(sae, i) {
      var row = sae.tokens[i] || [];
      if (!row.length) return el("p", "muted", "No feature is active here.");
      var list = el("ol", "plain feats");
      row.forEach(function (fv) {
        var item = el("li");
        var link = el("a", "", "#" + fv[0]);
        link.href = "/saes/" + encodeURIComponent(sae.name) + "/features/" + fv[0];
        item.appendChild(link);
        item.appendChild(document.createTextNode(" "));
        item.appendChild(el("span", "num", js.fmt(fv[1] || 0)));
        var explanation = sae.explanations[String(fv[0])];
        if (explanation) {
          item.appendChild(document.createTextNode(" "));
          item.appendChild(el("span", "expl", explanation));
        }
        list.appendChild(item);
      });
      return list;
    }

    function show(i) {
      panel.textContent = "";
      var head = el("h2");
      head.id = "panel-h";
      head.appendChild(document.createTextNode("Token " + i + ": "));
      head.appendChild(el("code", "tok", tokens[i].textContent));
      panel.appendChild(head);
      var columns = el("div", "columns");
      data.saes.forEach(function (sae) {
        var col = el("div", "column");
        if (several) col.appendChild(el("h3", "", sae.name));
        col.appendChild(featureList(sae, i));
        columns.appendChild(col);
      });
      panel.appendChild(columns);
      tokens.forEach(function (t, j) { t.classList.toggle("shown", j === i); });
    }

    function indexOf(target) {
      var button = target && target.closest ? target.closest("button.t") : null;
      return button && box.contains(button) ? parseInt(button.dataset.i, 10) : -1;
    }

    box.addEventListener("mouseover", function (event) {
      var i = indexOf(event.target);
      if (i >= 0 && pinned === null) show(i);
    });
    box.addEventListener("focusin", function (event) {
      var i = indexOf(event.target);
      if (i < 0) return;
      tokens.forEach(function (t, j) { t.tabIndex = j === i ? 0 : -1; });  // roving tabindex: one tab stop
      show(i);
    });
    box.addEventListener("click", function (event) {
      var i = indexOf(event.target);
      if (i < 0) return;
      event.preventDefault();
      pinned = pinned === i ? null : i;  // a second press unpins
      show(i);
      replaceParams({ pos: pinned === null ? null : String(i) });
    });
    box.addEventListener("keydown", function (event) {
      var i = indexOf(event.target);
      if (i < 0) return;
      var next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tokens.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      next = Math.max(0, Math.min(tokens.length - 1, next));
      tokens[next].focus();
    });

    // Colour the tokens by one feature (or clear them), as the server renders ?hl=SAE:INDEX.
    function highlight(key) {
      var sae = null;
      var index = null;
      if (key) {
        var at = key.lastIndexOf(":");
        index = key.slice(at + 1);
        sae = data.saes.filter(function (s) { return s.name === key.slice(0, at); })[0] || null;
        if (!sae || !sae.dense[index]) { sae = null; key = null; }
      }
      var values = sae ? sae.dense[index] : null;
      var scale = sae ? sae.scales[index] || 1 : 1;
      var best = -1;
      if (values) for (var j = 0; j < values.length; j++) if (values[j] > 0 && (best < 0 || values[j] > values[best])) best = j;
      tokens.forEach(function (t, i) {
        var v = values ? values[i] || 0 : 0;
        t.classList.remove("hi");
        t.classList.toggle("max", i === best);
        t.style.background = v > 0 ? js.colour(v / scale) : "";
        if (v > 0 && v / scale >= js.DARK_FROM) t.classList.add("hi");
        t.title = values ? js.fmt(v) + " \u00b7 " + featuresTitle(i) : featuresTitle(i);
      });
      form.querySelectorAll('button[name="hl"]').forEach(function (b) {
        b.setAttribute("aria-pressed", b.value === key ? "true" : "false");
      });
      var hidden = form.querySelector('input[type="hidden"][name="hl"]');
      if (key) {
        if (!hidden) {
          hidden = el("input");
          hidden.type = "hidden";
          hidden.name = "hl";
          form.insertBefore(hidden, form.firstChild);
        }
        hidden.value = key;
      } else if (hidden) {
        hidden.remove();
      }
      if (legend) {
        legend.textContent = sae
          ? "Coloured by feature #" + index + " of " + sae.name + ", from 0 (white) to " + js.fmt(scale) +
            " (dark orange; its max over the index, or here if larger); its max token is outlined."
          : "Hover, focus (arrow keys move along) or press a token to list its features; choose a feature below to colour the text by it.";
      }
      current = key;
      replaceParams({ hl: key });
    }

    form.addEventListener("click", function (event) {
      var button = event.target && event.target.closest ? event.target.closest('button[name="hl"]') : null;
      if (!button) return;
      event.preventDefault();
      highlight(current === button.value ? null : button.value);  // a second press clears the colours
    });
  }

  document.addEventListener("DOMContentLoaded", init);  // after app.js (deferred too) has set window.jumpscope
})();
