/* kvbench site: the sortable, filterable, paged tables of the overview and the run pages, and the Plotly charts.
   Every string from a record is put in the page with textContent (never innerHTML): a record cannot inject markup.
   Table data: {columns: [{key, title, tip, wrap}], rows: [{href, id, f: {filter: value}, c: [[sort, text, tip, mark], ...]}]}. */
(function () {
  "use strict";

  function readJSON(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }

  function compare(a, b) {  // blanks last whatever the direction is handled by the caller
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }

  function Table(root, data) {
    this.root = root;
    this.data = data;
    this.pageSize = parseInt(root.getAttribute("data-page-size") || "50", 10);
    this.page = 0;
    this.sortColumn = null;
    this.sortAscending = true;
    this.filters = {};
    this.filterNames = JSON.parse(root.getAttribute("data-filters") || "[]");
    this.build();
    this.render();
  }

  Table.prototype.build = function () {
    var self = this;
    var controls = el("div", {"class": "controls"});
    this.filterNames.forEach(function (name) {
      var values = {};
      self.data.rows.forEach(function (row) { values[row.f[name]] = true; });
      var select = el("select", {"data-filter": name, "aria-label": "filter by " + name});
      select.appendChild(el("option", {value: ""}, "all " + name + "s"));
      Object.keys(values).sort().forEach(function (v) { select.appendChild(el("option", {value: v}, v)); });
      select.addEventListener("change", function () { self.filters[name] = select.value; self.page = 0; self.render(); });
      controls.appendChild(select);
    });
    var size = el("select", {"class": "page-size", "aria-label": "rows per page"});
    [25, 50, 100, 500, 0].forEach(function (n) {
      var option = el("option", {value: String(n)}, n ? n + " rows per page" : "all rows");
      if (n === self.pageSize) { option.selected = true; }
      size.appendChild(option);
    });
    size.addEventListener("change", function () { self.pageSize = parseInt(size.value, 10); self.page = 0; self.render(); });
    controls.appendChild(size);
    this.count = el("span", {"class": "count"});
    controls.appendChild(this.count);
    this.root.appendChild(controls);
    var table = el("table", {"class": "data"});
    var head = el("tr");
    this.data.columns.forEach(function (column, i) {
      var th = el("th", {"data-column": column.key || column.title, title: column.tip || "click to sort"}, column.title);
      th.addEventListener("click", function () { self.sortBy(i); });
      head.appendChild(th);
    });
    table.appendChild(el("thead")).appendChild(head);
    this.body = el("tbody");
    table.appendChild(this.body);
    this.heads = head.children;
    var scroller = el("div", {"class": "scroller"});
    scroller.appendChild(table);
    this.root.appendChild(scroller);
    var pager = el("div", {"class": "pager"});
    this.prev = el("button", {type: "button"}, "‹ previous");
    this.next = el("button", {type: "button"}, "next ›");
    this.prev.addEventListener("click", function () { self.page -= 1; self.render(); });
    this.next.addEventListener("click", function () { self.page += 1; self.render(); });
    pager.appendChild(this.prev);
    pager.appendChild(this.next);
    this.root.appendChild(pager);
  };

  Table.prototype.sortBy = function (i) {
    this.sortAscending = this.sortColumn === i ? !this.sortAscending : true;
    this.sortColumn = i;
    this.page = 0;
    for (var k = 0; k < this.heads.length; k++) { this.heads[k].removeAttribute("aria-sort"); }
    this.heads[i].setAttribute("aria-sort", this.sortAscending ? "ascending" : "descending");
    this.render();
  };

  Table.prototype.visibleRows = function () {
    var self = this;
    var rows = this.data.rows.filter(function (row) {
      return self.filterNames.every(function (name) { return !self.filters[name] || String(row.f[name]) === self.filters[name]; });
    });
    if (this.sortColumn !== null) {
      var i = this.sortColumn, sign = this.sortAscending ? 1 : -1;
      rows = rows.slice().sort(function (a, b) {
        var x = a.c[i][0], y = b.c[i][0];
        if (x === null || x === "") { return (y === null || y === "") ? 0 : 1; }
        if (y === null || y === "") { return -1; }
        return sign * compare(x, y);
      });
    }
    return rows;
  };

  Table.prototype.render = function () {
    var rows = this.visibleRows();
    var size = this.pageSize || rows.length || 1;
    var pages = Math.max(1, Math.ceil(rows.length / size));
    this.page = Math.min(Math.max(this.page, 0), pages - 1);
    var start = this.page * size, shown = rows.slice(start, start + size);
    var body = el("tbody"), columns = this.data.columns;
    shown.forEach(function (row) {
      var tr = el("tr", {"data-run": row.id || ""});
      row.c.forEach(function (cell, i) {
        var td = el("td", columns[i].wrap ? {"class": "wrap"} : {});
        if (cell[2]) { td.setAttribute("title", cell[2]); }
        if (i === 0 && row.href) {
          td.appendChild(el("a", {href: row.href}, cell[1]));
        } else {
          td.textContent = cell[1];
        }
        if (cell[3]) { td.appendChild(el("span", {"class": "mark mark-" + cell[3], title: cell[2] || cell[3]}, cell[3] === "worse" ? " ▼" : " ▲")); }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    this.body.parentNode.replaceChild(body, this.body);
    this.body = body;
    this.count.textContent = rows.length ? "rows " + (start + 1) + "–" + (start + shown.length) + " of " + rows.length +
      (rows.length !== this.data.rows.length ? " (" + this.data.rows.length + " in all)" : "") : "no rows";
    this.prev.disabled = this.page === 0;
    this.next.disabled = this.page >= pages - 1;
  };

  function charts() {
    var figures = readJSON("figures") || [];
    figures.forEach(function (figure) {
      var div = document.getElementById(figure.id);
      if (!div) { return; }
      if (typeof Plotly === "undefined") {  // the committed example ships without Plotly's own file (see README)
        div.textContent = "Charts need assets/plotly.min.js, which kvbench-report --html writes (make site).";
        return;
      }
      Plotly.newPlot(div, figure.data, figure.layout, {displaylogo: false, responsive: true});
      div.on("plotly_click", function (event) {  // a point's customdata is its run page
        var href = event.points && event.points[0] && event.points[0].customdata;
        if (href) { window.location.href = href; }
      });
    });
    document.body.setAttribute("data-charts", "drawn");
  }

  document.addEventListener("DOMContentLoaded", function () {
    var tables = document.querySelectorAll("[data-table]");
    window.kvbenchTables = {};
    Array.prototype.forEach.call(tables, function (root) {
      window.kvbenchTables[root.id] = new Table(root, readJSON(root.getAttribute("data-table")));
    });
    window.setTimeout(charts, 0);  // the table first: it is usable while Plotly draws
  });
})();
