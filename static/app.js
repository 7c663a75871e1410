// Loads the Rust client. A dynamic import, so that a missing or broken build
// is reported on the page instead of failing silently.
const status = () => document.getElementById("status");

import("/pkg/web_client.js")
  .then((client) => client.default())
  .catch((error) => {
    console.error(error);
    const line = status();
    if (line) {
      line.textContent =
        "The client did not load. If you run this server yourself, build the client first: cargo xtask build.";
      line.classList.add("error");
    }
    document.getElementById("app")?.setAttribute("data-state", "broken");
  });
