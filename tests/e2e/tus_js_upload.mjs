// Upload one file with tus-js-client (its Node build) and print one JSON line with the result.
//
// Usage: node tus_js_upload.mjs '<json>'
// The JSON argument:
//   endpoint         tus creation URL (required)
//   file             path of the file to upload (required)
//   chunkSize        bytes per PATCH (optional; default: the whole rest in one PATCH)
//   parallelUploads  number of partial uploads (optional; concatenation extension)
//   metadata         object of string values (optional)
//   headers          extra request headers (optional)
//   source           "stream" (fs.createReadStream, default) or "buffer" (a Buffer)
//   retryDelays      array of ms or null (optional; default null: any error fails the run)
//   abortAfterBytes  abort the upload once this many bytes were sent (simulated broken
//                    connection), then resume it with a new Upload (optional)
//   resumeWith       "uploadUrl" (default): the new Upload is given the URL of the first one;
//                    "findPreviousUploads": both Uploads use a FileUrlStorage at
//                    `urlStoragePath` and the second finds and resumes the first through it
//   urlStoragePath   file for FileUrlStorage (needed by "findPreviousUploads")
//   protocol         tus-js-client's protocol option: "tus-v1" (default), "ietf-draft-03"
//                    (Upload-Draft-Interop-Version 5) or "ietf-draft-05" (6)
//
// Output (stdout, one line): {"url", "bytesUploaded", "size", "aborted": null | {"url",
// "bytesSent", "acceptedOffset"}, "resumeOffset": null | number, "methods": [...]}
// On failure: {"error": "..."} and exit code 1.

import fs from 'node:fs'
import tus from 'tus-js-client'

const { Upload, FileUrlStorage } = tus

function fail(err) {
  process.stdout.write(`${JSON.stringify({ error: String(err && (err.stack || err)) })}\n`)
  process.exit(1)
}

function source(args) {
  if (args.source === 'buffer') return fs.readFileSync(args.file)
  return fs.createReadStream(args.file)
}

// Runs one Upload to its end (or to its abort); resolves with what happened.
function run(args, extra, { abortAfterBytes = null, prepare = null } = {}) {
  return new Promise((resolve, reject) => {
    const state = {
      bytesSent: 0,
      acceptedOffset: 0,
      resumeOffset: null,
      aborted: false,
      methods: [],
    }
    const options = {
      endpoint: args.endpoint,
      metadata: args.metadata ?? {},
      headers: args.headers ?? {},
      retryDelays: args.retryDelays === undefined ? null : args.retryDelays,
      removeFingerprintOnSuccess: false,
      ...extra,
      onProgress(bytesSent) {
        state.bytesSent = bytesSent
        if (abortAfterBytes != null && !state.aborted && bytesSent >= abortAfterBytes) {
          state.aborted = true
          // abort(false): stop sending, keep the upload on the server (no DELETE)
          upload.abort(false).then(() => resolve({ upload, state }), reject)
        }
      },
      onChunkComplete(_chunkSize, bytesAccepted) {
        if (!state.aborted) state.acceptedOffset = bytesAccepted
      },
      onAfterResponse(req, res) {
        const method = req.getMethod()
        state.methods.push(`${method} ${res.getStatus()}`)
        if (method === 'HEAD' && state.resumeOffset == null) {
          state.resumeOffset = Number(res.getHeader('Upload-Offset'))
        }
      },
      onSuccess() {
        if (!state.aborted) resolve({ upload, state })
      },
      onError(err) {
        if (!state.aborted) reject(err)
      },
    }
    if (args.chunkSize) options.chunkSize = args.chunkSize
    if (args.protocol) options.protocol = args.protocol
    if (args.parallelUploads) options.parallelUploads = args.parallelUploads
    const upload = new Upload(source(args), options)
    Promise.resolve(prepare ? prepare(upload) : null)
      .then(() => upload.start())
      .catch(reject)
  })
}

async function main() {
  const args = JSON.parse(process.argv[2])
  const size = fs.statSync(args.file).size
  const storage = {}
  if (args.resumeWith === 'findPreviousUploads') {
    if (!args.urlStoragePath) throw new Error('findPreviousUploads needs urlStoragePath')
    storage.urlStorage = new FileUrlStorage(args.urlStoragePath)
    storage.storeFingerprintForResuming = true
  }

  if (args.abortAfterBytes == null) {
    const { upload, state } = await run(args, storage)
    return { url: upload.url, bytesUploaded: size, size, aborted: null, ...pick(state) }
  }

  const first = await run(args, storage, { abortAfterBytes: args.abortAfterBytes })
  if (!first.state.aborted) throw new Error('the upload finished before abortAfterBytes')
  const aborted = {
    url: first.upload.url,
    bytesSent: first.state.bytesSent,
    acceptedOffset: first.state.acceptedOffset,
  }

  let prepare = null
  const extra = { ...storage }
  if (args.resumeWith === 'findPreviousUploads') {
    prepare = async (upload) => {
      const previous = await upload.findPreviousUploads()
      if (previous.length !== 1) {
        throw new Error(`expected one previous upload, found ${previous.length}`)
      }
      upload.resumeFromPreviousUpload(previous[0])
    }
  } else {
    extra.uploadUrl = aborted.url
  }
  const second = await run(args, extra, { prepare })
  return {
    url: second.upload.url,
    bytesUploaded: size,
    size,
    aborted,
    ...pick(second.state),
  }
}

function pick(state) {
  return { resumeOffset: state.resumeOffset, methods: state.methods }
}

main().then((result) => {
  process.stdout.write(`${JSON.stringify(result)}\n`)
  process.exit(0)
}, fail)
