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
-- A failed send is a Failure job (GET /jobs; kept across restarts: SaveJobs). When a later
-- routing job succeeds (the node is back) the route sends each instance that failed again,
-- by a new job (at most MAX_TRIES sends each), and, the first time after Orthanc started,
-- those of the node's Failure jobs still in Orthanc's job history (JobsHistorySize) from
-- before the restart, unless delivered since or failed MAX_TRIES times. By hand:
-- POST /jobs/<id>/resubmit (deploy/README.md). Each job is one association.
local SKIP = { ["TRIAGE"] = true }
local MAX_TRIES = 10
local SENDING = {}    -- job ID -> { instance = ID, tries = n }: this run's routing jobs
local FAILED = {}     -- job ID -> { instance = ID, tries = n }: failed, sent again later
local KNOWN = {}      -- job ID -> true: every routing job this run started
local recovered = false  -- were the failures of before the last start looked for?
local PARTS = {
  ["DX"] = { ["HIP"] = true, ["PELVIS"] = true },
  ["CR"] = { ["HIP"] = true, ["PELVIS"] = true },
  ["CT"] = { ["HIP"] = true, ["PELVIS"] = true, ["ABDOMENPELVIS"] = true },
}

-- Send one instance to the node by a job of its own; its ID, or nil when Orthanc refused
-- (the instance deleted meanwhile).
local function route(instanceId, tries)
  local answer = RestApiPost('/modalities/node/store',
    DumpJson({ Resources = { instanceId }, Asynchronous = true }, true))
  if answer == nil then
    print('instance ' .. instanceId .. ' not sent to the node: Orthanc refused the job '
          .. '(deleted since?)')
    return nil
  end
  local job = ParseJson(answer)
  SENDING[job['ID']] = { instance = instanceId, tries = tries }
  KNOWN[job['ID']] = true
  return job['ID']
end

-- The instance, series and study IDs of an instance Orthanc still holds (nil: it holds no
-- such instance: deleted, or the ID of a study or series an admin sent by hand).
local function lineage(resource)
  local instance = RestApiGet('/instances/' .. resource)
  if instance == nil then
    return nil
  end
  local series = ParseJson(instance)['ParentSeries']
  local study = ParseJson(RestApiGet('/series/' .. series))['ParentStudy']
  return { resource, series, study }
end

-- After a start: the instances whose routing failed before it (Failure jobs the job history
-- kept: SaveJobs), sent again by new jobs; not one delivered since (by a job that sent it,
-- its series or its study), one being sent in this run, one that failed MAX_TRIES times
-- already, nor what a failed job sent that is not an instance (a study an admin sent by
-- hand: POST /jobs/<id>/resubmit for those), nor an instance deleted since.
local function send_earlier_failures()
  local node = ParseJson(RestApiGet('/modalities/node/configuration'))['AET']
  local delivered, failures, order = {}, {}, {}
  for _, job in ipairs(ParseJson(RestApiGet('/jobs?expand'))) do
    local content = job['Content'] or {}
    if job['Type'] == 'DicomModalityStore' and content['RemoteAet'] == node then
      -- A C-MOVE's store job has no ParentResources.
      for _, resource in ipairs(content['ParentResources'] or {}) do
        if job['State'] == 'Success' then
          delivered[resource] = true
        elseif job['State'] == 'Failure' and not KNOWN[job['ID']] then
          if failures[resource] == nil then
            failures[resource] = 0
            table.insert(order, resource)
          end
          failures[resource] = failures[resource] + 1
        end
      end
    end
  end
  local sending = {}
  for _, sent in pairs(SENDING) do
    sending[sent.instance] = true
  end
  for _, resource in ipairs(order) do
    local ids = nil
    if not sending[resource] and failures[resource] < MAX_TRIES then
      ids = lineage(resource)
    end
    if ids ~= nil and not (delivered[ids[1]] or delivered[ids[2]] or delivered[ids[3]]) then
      local job = route(resource, failures[resource] + 1)
      if job ~= nil then
        print('instance ' .. resource .. ' failed before Orthanc started (' .. failures[resource]
              .. ' sends); sent again by job ' .. job)
      end
    end
  end
end

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
    route(instanceId, 1)
  end
end

function OnJobFailure(jobId)
  local sent = SENDING[jobId]
  if sent == nil then
    return
  end
  SENDING[jobId] = nil
  if sent.tries < MAX_TRIES then
    FAILED[jobId] = sent
    print('routing job ' .. jobId .. ' failed; instance ' .. sent.instance
          .. ' sent again when a later one succeeds')
  else
    print('routing job ' .. jobId .. ' failed, not tried again: POST /jobs/' .. jobId
          .. '/resubmit when the node takes it')
  end
end

function OnJobSuccess(jobId)
  if SENDING[jobId] == nil then
    return
  end
  SENDING[jobId] = nil
  for failed, sent in pairs(FAILED) do  -- the node answers again: send what it missed
    FAILED[failed] = nil
    local job = route(sent.instance, sent.tries + 1)
    if job ~= nil then
      print('instance ' .. sent.instance .. ' of routing job ' .. failed .. ' sent again by job '
            .. job)
    end
  end
  if not recovered then
    recovered = true
    send_earlier_failures()
  end
end
