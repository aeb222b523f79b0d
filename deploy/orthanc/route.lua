-- Autorouting for the compose PACS (deploy/compose.yaml): every DX/CR instance of the hip or
-- pelvis that Orthanc stores goes to the modality 'node' (the triage node, AE title TRIAGE),
-- and every CT of the hip or pelvis (the multimodal engine reads a hip CT of the same study;
-- a CT study without radiographs is received and its job skipped), except instances
-- sent by the node itself (its SR and Secondary Captures come back from AE title TRIAGE):
-- that is the loop guard. The integration tests run this file (tests/support/orthanc.py swaps
-- in its own SKIP list).
-- Body Part Examined decides what is a hip study: the node's default rules also take an AP
-- or PA radiograph without one (some modalities leave it empty), so an AP chest without it
-- that reached the node would be read as a pelvis. A site whose hip images come without a
-- body part adds [''] = true below and keeps other studies away by another test (the
-- modality's AE title, the study description).
-- Every decision is printed to Orthanc's log ("Lua says: route ..." / "Lua says: skip ...").
-- Each routed instance is sent by an asynchronous job of Orthanc's jobs engine
-- (POST /modalities/node/store). Lua's SendToModality, used before, logged a failed send
-- (the node down, restarting, or refusing with 0xA700 on a full spool) and reported its job
-- a success: the instance never reached the node, and nothing but that log line said so.
-- A failed job is now listed by GET /jobs as Failure (kept across restarts: SaveJobs), and
-- resubmitted when a later routing job succeeds (the node is back), at most MAX_RESUBMITS
-- times; by hand: POST /jobs/<id>/resubmit (deploy/README.md). Each job is one association.
local SKIP = { ["TRIAGE"] = true }
local MAX_RESUBMITS = 10
local ROUTED = {}  -- job ID -> how often it was resubmitted: the routing jobs not yet sent
local FAILED = {}  -- job ID -> true: routing jobs that failed, resubmitted after a success
local PARTS = {
  ["DX"] = { ["HIP"] = true, ["PELVIS"] = true },
  ["CR"] = { ["HIP"] = true, ["PELVIS"] = true },
  ["CT"] = { ["HIP"] = true, ["PELVIS"] = true, ["ABDOMENPELVIS"] = true },
}

local function trim(s)
  return (string.gsub(s or '', '^%s*(.-)%s*$', '%1'))
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = trim(tags['Modality'])
  local part = string.upper(trim(tags['BodyPartExamined']))
  local caller = trim(metadata['RemoteAET'])
  if caller == '' and origin ~= nil then
    caller = trim(origin['RemoteAet'])
  end
  local sop = trim(tags['SOPInstanceUID'])
  local what = 'skip ' .. instanceId .. ' sop=' .. sop .. ' modality=' .. modality
               .. ' part=' .. part .. ' from=' .. caller
  if not PARTS[modality] then
    print(what .. ': modality not routed')
  elseif not PARTS[modality][part] then
    print(what .. ': body part not routed')
  elseif SKIP[caller] then
    print(what .. ': calling AE in skip list')
  else
    print('route ' .. instanceId .. ' sop=' .. sop .. ' modality=' .. modality
          .. ' part=' .. part .. ' from=' .. caller .. ' -> node')
    local job = ParseJson(RestApiPost('/modalities/node/store',
      DumpJson({ Resources = { instanceId }, Asynchronous = true }, true)))
    ROUTED[job['ID']] = 0
  end
end

function OnJobFailure(jobId)
  local tries = ROUTED[jobId]
  if tries == nil then
    return
  end
  if tries < MAX_RESUBMITS then
    FAILED[jobId] = true
    print('routing job ' .. jobId .. ' failed; resubmitted when a later one succeeds')
  else
    ROUTED[jobId] = nil
    print('routing job ' .. jobId .. ' failed ' .. (tries + 1) .. ' times; not resubmitted '
          .. 'again: POST /jobs/' .. jobId .. '/resubmit when the node takes it')
  end
end

function OnJobSuccess(jobId)
  if ROUTED[jobId] == nil then
    return
  end
  ROUTED[jobId] = nil
  for id in pairs(FAILED) do  -- the node answers again: send what it missed
    FAILED[id] = nil
    ROUTED[id] = ROUTED[id] + 1
    print('routing job ' .. id .. ' resubmitted')
    RestApiPost('/jobs/' .. id .. '/resubmit', '')
  end
end
