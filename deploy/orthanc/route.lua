-- Autorouting for the compose PACS (deploy/compose.yaml): every DX/CR instance Orthanc
-- stores goes to the modality 'node' (the triage node, AE title TRIAGE), and every CT (the
-- multimodal engine reads a hip CT of the same study; a CT study without radiographs is
-- received and its job skipped), except instances
-- sent by the node itself (its SR and Secondary Captures come back from AE title TRIAGE):
-- that is the loop guard. The integration tests run this file (tests/support/orthanc.py swaps
-- in its own SKIP list).
-- Every decision is printed to Orthanc's log ("Lua says: route ..." / "Lua says: skip ...").
local SKIP = { ["TRIAGE"] = true }
local ROUTED = { ["DX"] = true, ["CR"] = true, ["CT"] = true }

local function trim(s)
  return (string.gsub(s or '', '^%s*(.-)%s*$', '%1'))
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = trim(tags['Modality'])
  local caller = trim(metadata['RemoteAET'])
  if caller == '' and origin ~= nil then
    caller = trim(origin['RemoteAet'])
  end
  local sop = trim(tags['SOPInstanceUID'])
  if not ROUTED[modality] then
    print('skip ' .. instanceId .. ' sop=' .. sop .. ' modality=' .. modality
          .. ' from=' .. caller .. ': modality not routed')
  elseif SKIP[caller] then
    print('skip ' .. instanceId .. ' sop=' .. sop .. ' modality=' .. modality
          .. ' from=' .. caller .. ': calling AE in skip list')
  else
    print('route ' .. instanceId .. ' sop=' .. sop .. ' modality=' .. modality
          .. ' from=' .. caller .. ' -> node')
    SendToModality(instanceId, 'node')
  end
end
