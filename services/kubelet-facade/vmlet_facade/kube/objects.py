"""Kubernetes objects as the facade reads them: decoded JSON, typed where its shape is known.

``Obj`` is any object (a dict of its JSON). The TypedDicts describe the fields the facade reads
of a Pod and a Node (a subset: the rest of the JSON is there, untyped) and the vmlet.io kinds
(``vmlet_api.names.KINDS``) as their CRDs in k8s/base/crds/ define spec and status. They are
annotations only: a TypedDict is a plain dict at run time, and an apiserver may omit any field,
so every key is optional (``total=False``) unless the apiserver always sets it.
"""

from __future__ import annotations

from typing import Any, Literal, Required, TypedDict

__all__ = [
    "Access",
    "Condition",
    "ConditionStatus",
    "ContainerSpec",
    "Disk",
    "DiskStatus",
    "Expose",
    "ExposedPort",
    "KubeObject",
    "Network",
    "Node",
    "NodeAddress",
    "NodeSpec",
    "NodeStatus",
    "Obj",
    "ObjectMeta",
    "OperationStatus",
    "OwnerReference",
    "Placement",
    "Pod",
    "PodSpec",
    "PodStatus",
    "UserData",
    "VirtualMachine",
    "VirtualMachineBackup",
    "VirtualMachineBackupSpec",
    "VirtualMachineBackupStatus",
    "VirtualMachineMigration",
    "VirtualMachineMigrationSpec",
    "VirtualMachineMigrationStatus",
    "VirtualMachineRestore",
    "VirtualMachineRestoreSpec",
    "VirtualMachineRestoreStatus",
    "VirtualMachineSpec",
    "VirtualMachineStatus",
]

#: Any Kubernetes object (or part of one): its decoded JSON.
Obj = dict[str, Any]

# -- common ----------------------------------------------------------------------------------


class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str  # absent on cluster-scoped objects
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    finalizers: list[str]
    ownerReferences: list[OwnerReference]


class KubeObject(TypedDict, total=False):
    """What every object has: its type and its metadata."""

    apiVersion: str
    kind: str
    metadata: Required[ObjectMeta]


#: A condition's status.
ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(TypedDict, total=False):
    """A status condition."""

    type: Required[str]
    status: Required[ConditionStatus]
    reason: str
    message: str
    lastTransitionTime: str
    lastHeartbeatTime: str  # Node conditions only
    observedGeneration: int


# -- core/v1 (the fields the facade reads) ---------------------------------------------------


class ContainerSpec(TypedDict, total=False):
    name: Required[str]
    image: str
    resources: Obj  # requests and limits
    resizePolicy: list[Obj]


class PodSpec(TypedDict, total=False):
    nodeName: str
    containers: list[ContainerSpec]
    volumes: list[Obj]
    nodeSelector: dict[str, str]
    affinity: Obj
    tolerations: list[Obj]
    automountServiceAccountToken: bool
    enableServiceLinks: bool
    terminationGracePeriodSeconds: int


class PodStatus(TypedDict, total=False):
    phase: str
    reason: str
    message: str
    hostIP: str
    podIP: str
    podIPs: list[dict[str, str]]
    startTime: str
    conditions: list[Condition]
    containerStatuses: list[Obj]


class Pod(KubeObject, total=False):
    spec: PodSpec
    status: PodStatus


class NodeAddress(TypedDict):
    type: str
    address: str


class NodeStatus(TypedDict, total=False):
    addresses: list[NodeAddress]
    conditions: list[Condition]
    capacity: dict[str, str]
    allocatable: dict[str, str]
    daemonEndpoints: Obj
    nodeInfo: dict[str, str]


class NodeSpec(TypedDict, total=False):
    unschedulable: bool
    taints: list[Obj]
    providerID: str


class Node(KubeObject, total=False):
    spec: NodeSpec
    status: NodeStatus


# -- vmlet.io/v1alpha1 (k8s/base/crds/*.yaml) ------------------------------------------------

class UserData(TypedDict, total=False):
    secretName: Required[str]
    key: str


class Access(TypedDict, total=False):
    sshSecretName: str


class Placement(TypedDict, total=False):
    nodeName: str
    nodeSelector: dict[str, str]
    affinity: Obj  # nodeAffinity, podAffinity, podAntiAffinity as a Pod's


class Disk(TypedDict, total=False):
    name: Required[str]
    claimName: Required[str]
    readOnly: bool


class Network(TypedDict):
    name: str


class ExposedPort(TypedDict, total=False):
    name: str
    port: Required[int]
    targetPort: int
    protocol: Literal["TCP", "UDP", "SCTP"]


class Expose(TypedDict, total=False):
    ports: list[ExposedPort]


class VirtualMachineSpec(TypedDict, total=False):
    replicas: int  # 0 or 1 (the CRD defaults it to 1)
    provider: Required[str]
    image: Required[str]
    cpu: Required[int | str]
    memory: Required[int | str]
    userData: UserData
    access: Access
    placement: Placement
    disks: list[Disk]
    networks: list[Network]
    expose: Expose


class DiskStatus(TypedDict, total=False):
    name: str
    claimName: str


class VirtualMachineStatus(TypedDict, total=False):
    state: str  # one of vmlet_api.names.VM_STATES
    replicas: int
    nodeName: str
    podName: str
    addresses: list[str]
    providerID: str
    disks: list[DiskStatus]
    cpu: int | str
    memory: int | str
    observedGeneration: int
    conditions: list[Condition]


class VirtualMachine(KubeObject, total=False):
    spec: Required[VirtualMachineSpec]
    status: VirtualMachineStatus


class OperationStatus(TypedDict, total=False):
    """The status fields every operation kind (Backup, Restore, Migration) has."""

    state: str  # one of vmlet_api.names.OPERATION_STATES
    startTime: str
    completionTime: str
    observedGeneration: int
    conditions: list[Condition]


class VirtualMachineBackupSpec(TypedDict):
    vmName: str


class VirtualMachineBackupStatus(OperationStatus, total=False):
    jobName: str
    snapshotID: str
    snapshotName: str
    identity: str


class VirtualMachineBackup(KubeObject, total=False):
    spec: Required[VirtualMachineBackupSpec]
    status: VirtualMachineBackupStatus


class VirtualMachineRestoreSpec(TypedDict):
    backupName: str


class VirtualMachineRestoreStatus(OperationStatus, total=False):
    vmName: str
    snapshotID: str


class VirtualMachineRestore(KubeObject, total=False):
    spec: Required[VirtualMachineRestoreSpec]
    status: VirtualMachineRestoreStatus


class VirtualMachineMigrationSpec(TypedDict, total=False):
    vmName: Required[str]
    targetNode: str


class VirtualMachineMigrationStatus(OperationStatus, total=False):
    sourceNode: str
    targetNode: str


class VirtualMachineMigration(KubeObject, total=False):
    spec: Required[VirtualMachineMigrationSpec]
    status: VirtualMachineMigrationStatus
