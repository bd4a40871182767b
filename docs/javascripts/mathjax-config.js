// MathJax 3, served from the site itself (assets/mathjax/, copied from the npm package by
// docs/fetch_assets.py). pymdownx.arithmatex (generic mode) wraps every formula in
// <span|div class="arithmatex">\( ... \)</span>; only those elements are typeset.
//
// startup.typeset is false on purpose: with a local MathJax, letting MathJax typeset on load and
// then re-typesetting from material's document$ (whose clearCache() drops the glyph CSS) leaves
// every formula blank on first load. Typesetting only from document$ works on first load and on
// instant navigation alike.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  },
  startup: {
    typeset: false
  }
};

document$.subscribe(function () {
  var mj = window.MathJax;
  if (!mj || !mj.startup || !mj.startup.promise) {
    return;
  }
  mj.startup.promise.then(function () {
    mj.startup.output.clearCache();
    mj.typesetClear();
    mj.texReset();
    return mj.typesetPromise();
  });
});
