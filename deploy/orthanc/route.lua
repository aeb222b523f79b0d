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
local SKIP = { ["TRIAGE"] = true }
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
    SendToModality(instanceId, 'node')
  end
end
