"""The gallery's single HTML page: inline CSS and a small script that renders cards from data
inlined once in the page (no per-image HTML, nothing fetched but thumbnails, so the page works from
``file://``, a bucket or any static server).

Cards are built with DOM calls (``textContent``, ``setAttribute``), never ``innerHTML``: prompts are
user text and must not become markup. The data sits in a ``<script type="application/json">`` with
``<``, ``>`` and ``&`` escaped, so no prompt can close that element.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["CHUNK", "render_page"]

CHUNK = 60
"""Cards rendered per step: the first step is what a browser builds (and may load thumbnails for)
before the user scrolls; the next steps follow as the end of the grid comes into view."""

_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}

_CSS = """
:root{--bg:#f6f6f4;--card:#fff;--ink:#1d1d1f;--dim:#6b6b70;--line:#e2e2e0;--accent:#4f43dd}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;background:var(--bg);color:var(--ink)}
header{position:sticky;top:0;z-index:2;background:var(--bg);border-bottom:1px solid var(--line);padding:12px 20px}
h1{font-size:18px;margin:0 0 6px}
.totals{color:var(--dim);margin-bottom:8px}
.controls{display:flex;gap:10px;flex-wrap:wrap;align-items:center}
.controls input{flex:1 1 320px;padding:7px 10px;border:1px solid var(--line);border-radius:6px;font:inherit}
.controls select{padding:7px;border:1px solid var(--line);border-radius:6px;font:inherit;background:#fff}
#status{color:var(--dim)}
table.assets{border-collapse:collapse;margin:6px 0 0;font-size:13px}
table.assets td,table.assets th{padding:2px 12px 2px 0;text-align:left}
table.assets td.n{text-align:right;font-variant-numeric:tabular-nums}
main{padding:16px 20px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden;display:flex;flex-direction:column}
.card.target{outline:3px solid var(--accent)}
.thumb{display:flex;align-items:center;justify-content:center;height:220px;background:#ececea}
.thumb img{max-width:100%;max-height:220px;object-fit:contain}
.thumb .none{color:var(--dim);font-size:12px}
.body{padding:8px 10px 10px;display:flex;flex-direction:column;gap:4px}
.key{font-weight:600;overflow-wrap:anywhere}
.key .asset{color:var(--dim);font-weight:400}
.prompt{margin:0;display:-webkit-box;-webkit-line-clamp:4;-webkit-box-orient:vertical;overflow:hidden}
.revised{margin:0;color:var(--dim);font-style:italic;display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden}
.meta{color:var(--dim);font-size:12px;font-variant-numeric:tabular-nums}
.lineage{font-size:12px;display:flex;flex-wrap:wrap;gap:6px;align-items:center}
.lineage a{display:inline-flex;align-items:center;gap:4px;color:var(--accent);text-decoration:none}
.lineage img{width:36px;height:36px;object-fit:cover;border-radius:3px;border:1px solid var(--line)}
.stale{color:#b4491f}
#more{height:1px}
.empty{color:var(--dim);padding:40px 0;text-align:center}
"""

_JS = r"""
(function(){
"use strict";
const D=JSON.parse(document.getElementById("gallery-data").textContent);
const F={};D.fields.forEach(function(f,i){F[f]=i;});
const items=D.items.map(function(r,i){
  const asset=D.assets[r[F.asset]];
  const it={i:i,asset:asset.key,part:r[F.partition],sha:r[F.sha256],ext:r[F.ext],
    w:r[F.width],h:r[F.height],prompt:r[F.prompt]||"",revised:r[F.revised_prompt]||"",
    model:r[F.model],size:r[F.size],quality:r[F.quality],cost:r[F.cost_usd],lat:r[F.latency_s],
    thumb:r[F.thumb],sources:r[F.sources]||[]};
  it.id=it.asset+"/"+it.part;
  it.href=asset.href+encodeURIComponent(it.part)+"."+it.ext;
  it.text=(it.id+" "+it.prompt+" "+it.revised+" "+it.model).toLowerCase();
  return it;
});
const byId=new Map(items.map(function(it){return [it.id,it];}));
const edits=new Map();
items.forEach(function(it){it.sources.forEach(function(s){
  const id=s[0]+"/"+s[1];if(!edits.has(id))edits.set(id,[]);edits.get(id).push(it);});});
const grid=document.getElementById("grid"),more=document.getElementById("more");
const search=document.getElementById("search"),pick=document.getElementById("asset");
const status=document.getElementById("status");
let visible=items,shown=0;
function el(tag,cls,text){const e=document.createElement(tag);if(cls)e.className=cls;
  if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function thumbUrl(sha){return "thumbs/"+sha+"."+D.thumb_ext;}
function money(x){return "$"+Number(x).toFixed(4);}
function link(it,label,stale){
  const a=el("a","src");a.href="#c"+it.i;a.dataset.target=String(it.i);
  if(it.thumb){const im=el("img");im.loading="lazy";im.alt="";im.src=thumbUrl(it.sha);a.appendChild(im);}
  a.appendChild(el("span",stale?"stale":null,label));return a;}
function card(it){
  const c=el("article","card");c.id="c"+it.i;c.dataset.key=it.id;
  const t=el("a","thumb");t.href=it.href;t.target="_blank";t.rel="noopener";
  if(it.thumb){const im=el("img");im.loading="lazy";im.decoding="async";im.alt=it.id;
    im.src=thumbUrl(it.sha);t.appendChild(im);}else{t.appendChild(el("span","none","no thumbnail: image missing or unreadable"));}
  c.appendChild(t);
  const b=el("div","body");
  const k=el("div","key");k.appendChild(el("span","asset",it.asset+" / "));k.appendChild(el("span",null,it.part));
  b.appendChild(k);
  const p=el("p","prompt",it.prompt);p.title=it.prompt;b.appendChild(p);
  if(it.revised){const r=el("p","revised","revised: "+it.revised);r.title=it.revised;b.appendChild(r);}
  const dims=it.w+"\u00d7"+it.h,asked=it.size&&it.size!==it.w+"x"+it.h?"size "+it.size+" \u2192 ":"";
  b.appendChild(el("div","meta",[it.model,asked+dims,it.quality].filter(Boolean).join(" · ")));
  b.appendChild(el("div","meta",money(it.cost)+" · "+Number(it.lat).toFixed(2)+" s"));
  if(it.sources.length){const l=el("div","lineage from");l.appendChild(el("span",null,"from"));
    it.sources.forEach(function(s){const src=byId.get(s[0]+"/"+s[1]);
      if(src){const stale=src.sha!==s[2];l.appendChild(link(src,src.id+(stale?" (changed since)":""),stale));}
      else{l.appendChild(el("span",null,s[0]+"/"+s[1]));}});b.appendChild(l);}
  const kids=edits.get(it.id);
  if(kids){const l=el("div","lineage edits");l.appendChild(el("span",null,"edits"));
    kids.forEach(function(e){l.appendChild(link(e,e.id,false));});b.appendChild(l);}
  c.appendChild(b);return c;}
function renderMore(){
  const end=Math.min(visible.length,shown+D.chunk);const frag=document.createDocumentFragment();
  for(;shown<end;shown++)frag.appendChild(card(visible[shown]));grid.appendChild(frag);}
function apply(){
  const q=search.value.trim().toLowerCase().split(/\s+/).filter(Boolean),a=pick.value;
  visible=items.filter(function(it){return (!a||it.asset===a)&&q.every(function(w){return it.text.indexOf(w)>=0;});});
  grid.textContent="";shown=0;renderMore();
  status.textContent="showing "+visible.length+" of "+items.length;
  if(!visible.length)grid.appendChild(el("div","empty",items.length?"no image matches":"no images stored yet"));}
function reveal(i){
  const it=items[i];if(!it)return;let at=visible.indexOf(it);
  if(at<0){search.value="";pick.value="";apply();at=visible.indexOf(it);}
  while(shown<=at)renderMore();
  const c=document.getElementById("c"+i);
  document.querySelectorAll(".card.target").forEach(function(x){x.classList.remove("target");});
  c.classList.add("target");c.scrollIntoView({block:"center"});}
D.assets.forEach(function(a){const o=el("option",null,a.key+" ("+a.images+")");o.value=a.key;pick.appendChild(o);});
let timer=0;search.addEventListener("input",function(){clearTimeout(timer);timer=setTimeout(apply,120);});
pick.addEventListener("change",apply);
grid.addEventListener("click",function(ev){const a=ev.target.closest("a.src");if(!a)return;
  ev.preventDefault();history.replaceState(null,"","#c"+a.dataset.target);reveal(Number(a.dataset.target));});
new IntersectionObserver(function(es){if(es.some(function(e){return e.isIntersecting;})&&shown<visible.length)renderMore();},
  {rootMargin:"600px"}).observe(more);
apply();
const m=/^#c(\d+)$/.exec(location.hash);if(m)reveal(Number(m[1]));
window.gallery={items:items,reveal:reveal,apply:apply};
})();
"""


def _script_json(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escape in _JSON_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def _totals_line(data: Mapping[str, Any]) -> str:
    totals = data["totals"]
    return f"{totals['images']:,} images · ${totals['cost_usd']:.4f} total · built {data['built']}"


def _assets_table(data: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(asset['key'])}</td><td class=n>{asset['images']:,}</td>"
        f"<td class=n>${asset['cost_usd']:.4f}</td></tr>"
        for asset in data["assets"]
    )
    return f"<table class=assets><tr><th>asset</th><th>images</th><th>cost</th></tr>{rows}</table>"


def render_page(data: Mapping[str, Any]) -> bytes:
    """The page for ``data`` (see ``gallery.gallery_data``): totals and the per-asset table are
    rendered server-side (readable without JavaScript), cards by the script."""
    title = html.escape(str(data["title"]))
    page = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=generator content="dagster-gptimage">'
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{title}</h1><div class=totals>{html.escape(_totals_line(data))}</div>"
        '<div class=controls><input id=search type=search placeholder="Search prompts, keys, '
        'models…" autocomplete=off><select id=asset><option value="">all assets</option>'
        f"</select><span id=status></span></div>{_assets_table(data)}</header>"
        "<main><div id=grid></div><div id=more></div></main>"
        f'<script type="application/json" id="gallery-data">{_script_json(data)}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )
    return page.encode("utf-8")
