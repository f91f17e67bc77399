"""Every name of vmlet's Kubernetes API (group ``vmlet.io``), defined here once.

The CRDs in k8s/base/crds/ define the kinds and the states; the rest are the labels, annotations,
finalizer, condition types and reasons the facade writes and ``kubectl vm`` and the local
environment read. A name that changes here changes for all of them (and for the VMs and objects
already in a cluster: treat every value as part of the API).

Not here, because their owners define them and providers never import this package: the node
labels a provider sets (``vmlet.io/vsphere-host``, ``vmlet.io/vsphere-cluster``,
``vmlet.io/vsphere-datacenter``, ``vmlet.io/openstack-host``, ``node.vmlet.io/hypervisor``), the
memory provider's test annotations (``memory.vmlet.io/*``), the OpenStack provider's flavor
annotation (``openstack.vmlet.io/flavor``) and the conformance suite's ``conformance.vmlet.io/*``;
and the waiting reasons a provider gives a VM pod's container (docs/provider-guide.md,
``vmlet_facade.vmstate.PROGRESS_REASONS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# -- the API group ---------------------------------------------------------------------------

#: The API group of every vmlet kind, and the prefix of vmlet's labels and annotations.
GROUP: Final = "vmlet.io"
#: The one served (and stored) version.
VERSION: Final = "v1alpha1"
#: ``apiVersion`` of every vmlet object.
API_VERSION: Final = f"{GROUP}/{VERSION}"
#: The apiserver path the group's resources live under.
API_PATH: Final = f"/apis/{GROUP}/{VERSION}"
#: The prefix of vmlet's labels and annotations; a provider hears of a change of a VM pod's
#: annotations under it (UpdatePod).
PREFIX: Final = f"{GROUP}/"


# -- kinds -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """One vmlet kind: its ``kind`` and its resource (plural) name, as its CRD defines them."""

    kind: str
    plural: str

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """``virtualmachines.vmlet.io``: the resource name kubectl resolves to this group only
        (never to another API's ``vm``)."""
        return f"{self.plural}.{GROUP}"


#: A VM: its size, image, disks, networks and power (``spec.replicas`` 1 or 0).
VIRTUAL_MACHINE: Final = Kind("VirtualMachine", "virtualmachines")
#: A snapshot of a VirtualMachine, taken by a Job on the VM's node.
VIRTUAL_MACHINE_BACKUP: Final = Kind("VirtualMachineBackup", "virtualmachinebackups")
#: A VirtualMachine reverted to a Backup's snapshot.
VIRTUAL_MACHINE_RESTORE: Final = Kind("VirtualMachineRestore", "virtualmachinerestores")
#: A VirtualMachine moved to another (or a named) node.
VIRTUAL_MACHINE_MIGRATION: Final = Kind("VirtualMachineMigration", "virtualmachinemigrations")
#: Every kind of the group.
KINDS: Final = (VIRTUAL_MACHINE, VIRTUAL_MACHINE_BACKUP, VIRTUAL_MACHINE_RESTORE,
                VIRTUAL_MACHINE_MIGRATION)


# -- labels ----------------------------------------------------------------------------------

#: On VM pods, their Service and EndpointSlice: the VirtualMachine's name.
VM_LABEL: Final = "vmlet.io/vm"
#: On VM pods: the VirtualMachine's UID, a selector only (the facade's pod informer selects on
#: it); the identity is the VirtualMachine's metadata.uid, proven by the pod's ownerReference.
VM_UID_LABEL: Final = "vmlet.io/vm-uid"
#: On a Backup's Job and its pod: the VirtualMachineBackup's name.
BACKUP_LABEL: Final = "vmlet.io/backup"
#: On a provider's nodes: the provider's name. VM pods and backup pods select nodes by it.
PROVIDER_LABEL: Final = "vmlet.io/provider"
#: The ``endpointslice.kubernetes.io/managed-by`` of the EndpointSlices of exposed VMs.
MANAGED_BY: Final = GROUP


# -- annotations -----------------------------------------------------------------------------

# On VM pods, written from the VirtualMachine's spec (a bare pod may carry them too).
#: The networks the VM attaches to, comma-separated (spec.networks).
NETWORKS_ANNOTATION: Final = "vmlet.io/networks"
#: The Secret holding the VM's cloud-init user data (spec.userData.secretName).
USER_DATA_ANNOTATION: Final = "vmlet.io/user-data-secret"
#: The key of the user data in that Secret (spec.userData.key).
USER_DATA_KEY_ANNOTATION: Final = "vmlet.io/user-data-key"
#: The key read when the pod names none.
USER_DATA_KEY_DEFAULT: Final = "userdata"
#: The Secret with the guest's SSH login, for kubectl exec/attach/cp (spec.access.sshSecretName).
SSH_SECRET_ANNOTATION: Final = "vmlet.io/ssh-secret"

# On a VirtualMachine while a VirtualMachineMigration moves it.
#: The migration's name.
MIGRATION_ANNOTATION: Final = "vmlet.io/migration"
#: The node the VM leaves.
MIGRATION_SOURCE_ANNOTATION: Final = "vmlet.io/migration-source"
#: The node asked for, if any.
MIGRATION_TARGET_ANNOTATION: Final = "vmlet.io/migration-target"

# On operation pods (a Backup's Job pod): an operation on an existing VM, not a VM of its own.
#: The operation asked for; only BACKUP_OPERATION is known.
OPERATION_ANNOTATION: Final = "vmlet.io/operation"
#: OPERATION_ANNOTATION's value for a backup (a provider's CreateSnapshot).
BACKUP_OPERATION: Final = "backup"
#: The identity of the VM operated on.
TARGET_IDENTITY_ANNOTATION: Final = "vmlet.io/target-identity"
#: The name of the snapshot to take.
SNAPSHOT_NAME_ANNOTATION: Final = "vmlet.io/snapshot-name"
#: The image of a backup pod's container: never pulled, a name for people to read.
BACKUP_IMAGE: Final = "vmlet.io/operation:backup"

#: On nodes: the address of the provider that serves them.
PROVIDER_ADDRESS_ANNOTATION: Final = "vmlet.io/provider-address"


# -- finalizers, taints, storage -------------------------------------------------------------

#: On VirtualMachines: removed once the VM is destroyed in the IaaS.
DESTROY_VM_FINALIZER: Final = "vmlet.io/destroy-vm"
#: The taint key of vmlet's nodes (virtual-kubelet's name: workloads written for it tolerate it);
#: its value is the provider's name.
PROVIDER_TAINT: Final = "virtual-kubelet.io/provider"
#: A provider's StorageClass provisioner (and CSI driver name) is ``<provider>.vmlet.io``.
PROVISIONER_SUFFIX: Final = f".{GROUP}"


# -- states (status.state) -------------------------------------------------------------------

STATE_STOPPED: Final = "Stopped"
STATE_PROVISIONING: Final = "Provisioning"
STATE_STARTING: Final = "Starting"
STATE_RUNNING: Final = "Running"
STATE_STOPPING: Final = "Stopping"
STATE_MIGRATING: Final = "Migrating"
STATE_FAILED: Final = "Failed"
STATE_UNKNOWN: Final = "Unknown"  # the VM cannot be seen now (an outage): not off
STATE_PENDING: Final = "Pending"
STATE_SUCCEEDED: Final = "Succeeded"
#: A VirtualMachine's states, in the CRD's order.
VM_STATES: Final = (STATE_STOPPED, STATE_PROVISIONING, STATE_STARTING, STATE_RUNNING,
                    STATE_STOPPING, STATE_MIGRATING, STATE_FAILED, STATE_UNKNOWN)
#: A Backup's, Restore's or Migration's states (no status yet reads as Pending).
OPERATION_STATES: Final = (STATE_PENDING, STATE_RUNNING, STATE_SUCCEEDED, STATE_FAILED)
#: The states an operation ends in, never to leave.
OPERATION_ENDED: Final = frozenset({STATE_SUCCEEDED, STATE_FAILED})


# -- condition types -------------------------------------------------------------------------

#: VirtualMachine: True when Running, Unknown in an outage, else False; its reason says why.
CONDITION_READY: Final = "Ready"
#: VirtualMachine: True while something is wrong that waiting will not fix.
CONDITION_FAILURE: Final = "Failure"
#: VirtualMachine: True once its VM is gone from the IaaS (no new one is made on its own).
CONDITION_VM_LOST: Final = "VMLost"
#: Backup, Restore, Migration: True when Succeeded; its reason is the latest step.
CONDITION_COMPLETE: Final = "Complete"
#: Backup, Restore, Migration: True when Failed.
CONDITION_FAILED: Final = "Failed"


# -- condition reasons of VirtualMachines (Ready, Failure, VMLost) ---------------------------

REASON_RUNNING: Final = "Running"
REASON_STOPPED: Final = "Stopped"  # powered off; its disks kept
REASON_STARTING: Final = "Starting"
REASON_MIGRATING: Final = "Migrating"  # also a Migration's while it runs
REASON_DELETING: Final = "Deleting"  # the VirtualMachine is deleted: its pod goes first
REASON_POWERING_OFF: Final = "PoweringOff"
REASON_POD_PENDING: Final = "PodPending"  # the VM pod is not there yet
REASON_UNSCHEDULED: Final = "Unscheduled"  # no node for the VM pod yet
REASON_VM_FAILED: Final = "VMFailed"  # the VM pod failed without a reason of its own
REASON_NODE_UNREACHABLE: Final = "NodeUnreachable"  # the pod's phase is Unknown
REASON_NODE_NOT_READY: Final = "NodeNotReady"  # the VM's host stopped reporting
#: The facade gets no answer from the provider (killed, stopped, cut off); nodes and pods too.
REASON_PROVIDER_UNAVAILABLE: Final = "ProviderUnavailable"
#: The provider answers, but not its IaaS (vCenter, Nova); nodes and pods too.
REASON_IAAS_UNAVAILABLE: Final = "IaaSUnavailable"
REASON_DISK_IN_USE: Final = "DiskInUse"  # a claim of its disks is held by another VM
REASON_INVALID_SPEC: Final = "InvalidSpec"  # also the Warning Event's
REASON_NO_FAILURE: Final = "NoFailure"  # Failure=False
REASON_VM_LOST: Final = "VMLost"
REASON_VM_FOUND: Final = "VMFound"  # VMLost=False: the VM is in the IaaS again
REASON_DESTROY_PENDING: Final = "DestroyPending"  # the provider has not destroyed it yet
REASON_POD_NAME_TAKEN: Final = "PodNameTaken"  # another pod has the VM pod's name


# -- condition reasons of operations (Complete, Failed) --------------------------------------

REASON_VM_NOT_FOUND: Final = "VMNotFound"
REASON_VM_NOT_PLACED: Final = "VMNotPlaced"  # Backup: the VM has no node yet
REASON_JOB_CREATED: Final = "JobCreated"
REASON_JOB_POD_PENDING: Final = "JobPodPending"
REASON_JOB_RUNNING: Final = "JobRunning"
REASON_JOB_FAILED: Final = "JobFailed"  # the Job failed without a reason of its own
REASON_BACKUP_SUCCEEDED: Final = "BackupSucceeded"
REASON_WAITING_FOR_BACKUP: Final = "WaitingForBackup"  # Restore: the Backup is not done
REASON_BACKUP_NOT_USABLE: Final = "BackupNotUsable"  # Restore: the Backup failed or is gone
REASON_RESTORING: Final = "Restoring"
REASON_RESTORED: Final = "Restored"
REASON_WAITING_FOR_VM: Final = "WaitingForVM"  # Migration: the VM is not Running
REASON_ANOTHER_MIGRATION: Final = "AnotherMigration"
REASON_TARGET_NOT_READY: Final = "TargetNotReady"
REASON_SAME_NODE: Final = "SameNode"
REASON_VM_STOPPED: Final = "VMStopped"  # Migration: the VM stopped meanwhile
REASON_MIGRATION_TIMED_OUT: Final = "MigrationTimedOut"
REASON_MIGRATED: Final = "Migrated"
