// Marks the page as scripted (a headless browser check reads this marker)
// and renders /book, fetched from the same server.
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
})();
