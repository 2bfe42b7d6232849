// Marks the page as scripted (a headless browser check reads this marker),
// renders /book, fetched from the same server, and once everything has
// loaded, marks whether the stylesheet applied and the image decoded
// (ci/browser-check.sh reads these markers from the DOM).
(function () {
  "use strict";
  var status = document.getElementById("status");
  status.textContent = "JavaScript ran: ringserve-js-ok";
  status.className = "ran";
  document.body.setAttribute("data-js", "ringserve-js-ok");

  var book = document.getElementById("book");
  fetch("/book")
    .then(function (response) { return response.json(); })
    .then(function (data) {
      var list = document.createElement("dl");
      [["Title", data.title], ["Author", data.author], ["Year", data.year],
       ["Genres", data.genres.join(", ")], ["Pages", data.details.pages],
       ["ISBN", data.details.isbn]].forEach(function (row) {
        var dt = document.createElement("dt");
        var dd = document.createElement("dd");
        dt.textContent = row[0];
        dd.textContent = String(row[1]);
        list.appendChild(dt);
        list.appendChild(dd);
      });
      book.textContent = "";
      book.appendChild(list);
      document.body.setAttribute("data-book", "loaded");
    })
    .catch(function (error) { book.textContent = "Could not load /book: " + error; });

  window.addEventListener("load", function () {
    // css/site.css gives the header a 3px bottom border in --accent (#d9480f).
    var header = getComputedStyle(document.querySelector("header"));
    if (header.borderBottomWidth === "3px" && header.borderBottomColor === "rgb(217, 72, 15)") {
      document.body.setAttribute("data-css", "applied");
    }
    var logo = document.getElementById("logo");
    if (logo.complete && logo.naturalWidth > 0) {
      document.body.setAttribute("data-img", "loaded");
    }
  });
})();
