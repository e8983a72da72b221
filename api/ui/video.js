// Frames of a video in the browser: the frame rate and count from an MP4/MOV
// header (the <video> element exposes neither), and seeking to frame k.

function fourcc(view, offset) {
  return String.fromCharCode(...[0, 1, 2, 3].map((i) => view.getUint8(offset + i)));
}

function* boxes(view, start, end) {
  let offset = start;
  while (offset + 8 <= end) {
    let size = view.getUint32(offset);
    const type = fourcc(view, offset + 4);
    let header = 8;
    if (size === 1) {
      size = Number(view.getBigUint64(offset + 8));
      header = 16;
    } else if (size === 0) {
      size = end - offset;
    }
    if (size < header || offset + size > end) return;
    yield { type, start: offset + header, end: offset + size };
    offset += size;
  }
}

function child(view, box, type) {
  for (const found of boxes(view, box.start, box.end)) if (found.type === type) return found;
  return null;
}

async function bytes(file, start, length) {
  return new DataView(await file.slice(start, start + length).arrayBuffer());
}

// The top-level box `type` of an ISO-BMFF file, read without loading the file.
async function topBox(file, type) {
  let offset = 0;
  while (offset + 8 <= file.size) {
    const head = await bytes(file, offset, 16);
    let size = head.getUint32(0);
    const name = fourcc(head, 4);
    if (offset === 0 && name !== "ftyp") return null;
    if (size === 1) size = Number(head.getBigUint64(8));
    else if (size === 0) size = file.size - offset;
    if (size < 8) return null;
    if (name === type) return { offset, size };
    offset += size;
  }
  return null;
}

const MAX_MOOV = 64 * 1024 * 1024;

// {fps, frames} of the first video track of an MP4/MOV/M4V file, or null.
export async function mp4Facts(file) {
  try {
    const moov = await topBox(file, "moov");
    if (!moov || moov.size > MAX_MOOV) return null;
    const view = await bytes(file, moov.offset, moov.size);
    for (const trak of boxes(view, 8, view.byteLength)) {
      if (trak.type !== "trak") continue;
      const mdia = child(view, trak, "mdia");
      const hdlr = mdia && child(view, mdia, "hdlr");
      if (!hdlr || fourcc(view, hdlr.start + 8) !== "vide") continue;
      const mdhd = child(view, mdia, "mdhd");
      const timescale = view.getUint32(mdhd.start + (view.getUint8(mdhd.start) === 1 ? 20 : 12));
      const minf = child(view, mdia, "minf");
      const stbl = minf && child(view, minf, "stbl");
      const stts = stbl && child(view, stbl, "stts");
      if (!stts || !timescale) return null;
      let frames = 0;
      const deltas = new Map();
      const entries = view.getUint32(stts.start + 4);
      for (let i = 0; i < entries; i++) {
        const count = view.getUint32(stts.start + 8 + 8 * i);
        const delta = view.getUint32(stts.start + 12 + 8 * i);
        frames += count;
        deltas.set(delta, (deltas.get(delta) || 0) + count);
      }
      const [delta] = [...deltas.entries()].sort((a, b) => b[1] - a[1])[0] || [0];
      return delta && frames ? { fps: timescale / delta, frames } : null;
    }
  } catch {
    return null;
  }
  return null;
}

function once(target, ok, fail) {
  return new Promise((resolve, reject) => {
    const done = (handler) => (event) => {
      target.removeEventListener(ok, onOk);
      if (fail) target.removeEventListener(fail, onFail);
      handler(event);
    };
    const onOk = done(resolve);
    const onFail = done(() => reject(target.error || new Error(`${fail} on the video`)));
    target.addEventListener(ok, onOk);
    if (fail) target.addEventListener(fail, onFail);
  });
}

// Load `url` into `video`; rejects when the browser cannot play it.
export async function load(video, url) {
  const ready = once(video, "loadeddata", "error");
  video.src = url;
  video.load();
  await ready;
}

// Show frame `index` (0-based, in display order) of a video at `fps`.
export async function seek(video, index, fps) {
  const time = (index + 0.5) / fps;
  if (Math.abs(video.currentTime - time) < 1e-4 && video.readyState >= 2) return;
  const seeked = once(video, "seeked");
  video.currentTime = time;
  await seeked;
}
