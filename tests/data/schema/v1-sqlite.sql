CREATE TABLE schema_version (
	id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_schema_version PRIMARY KEY (id), 
	CONSTRAINT ck_schema_version_one_row CHECK (id = 1)
);

CREATE TABLE state (
	id INTEGER NOT NULL, 
	version BIGINT NOT NULL, 
	CONSTRAINT pk_state PRIMARY KEY (id), 
	CONSTRAINT ck_state_one_row CHECK (id = 1)
);

CREATE TABLE measurements (
	id INTEGER NOT NULL, 
	run_id VARCHAR(200) NOT NULL, 
	sample_id VARCHAR(200) NOT NULL, 
	hypervisor VARCHAR(16) NOT NULL, 
	arch VARCHAR(64) NOT NULL, 
	scope VARCHAR(8) NOT NULL, 
	overhead_bytes BIGINT NOT NULL, 
	raw_bytes BIGINT NOT NULL, 
	guest_touched_bytes BIGINT NOT NULL, 
	vcpus INTEGER NOT NULL, 
	guest_memory_bytes BIGINT NOT NULL, 
	graphics BOOLEAN NOT NULL, 
	vfio BOOLEAN NOT NULL, 
	io_threads INTEGER NOT NULL, 
	tpm BOOLEAN, 
	sev BOOLEAN, 
	dedicated_cpu BOOLEAN, 
	downward_metrics BOOLEAN, 
	vcpus_online BOOLEAN, 
	exec_probes INTEGER, 
	device_set VARCHAR(16), 
	touched_share FLOAT, 
	host_kernel VARCHAR(200) NOT NULL, 
	host_qemu VARCHAR(200) NOT NULL, 
	host_node VARCHAR(200) NOT NULL, 
	host_cpu_model VARCHAR(200) NOT NULL, 
	host_libvirt VARCHAR(200), 
	host_kubevirt VARCHAR(200), 
	accelerator VARCHAR(8) NOT NULL, 
	measured_at DATETIME NOT NULL, 
	record JSON NOT NULL, 
	ingested_at DATETIME NOT NULL, 
	ingested_by VARCHAR(200), 
	CONSTRAINT pk_measurements PRIMARY KEY (id), 
	CONSTRAINT ck_measurements_hypervisor CHECK (hypervisor IN ('kvm', 'mshv')), 
	CONSTRAINT ck_measurements_scope CHECK (scope IN ('qemu', 'pod', 'node')), 
	CONSTRAINT ck_measurements_accelerator CHECK (accelerator IN ('kvm', 'tcg', 'mshv')), 
	CONSTRAINT ck_measurements_vcpus CHECK (vcpus BETWEEN 1 AND 1024), 
	CONSTRAINT ck_measurements_io_threads CHECK (io_threads BETWEEN 0 AND 256), 
	CONSTRAINT uq_measurements_run_id_sample_id UNIQUE (run_id, sample_id), 
	CONSTRAINT ck_measurements_raw_not_negative CHECK (raw_bytes >= 0 AND guest_touched_bytes >= 0), 
	CONSTRAINT ck_measurements_overhead_consistent CHECK (raw_bytes - guest_touched_bytes = overhead_bytes)
);

CREATE INDEX ix_measurements_hypervisor_arch_scope_measured_at ON measurements (hypervisor, arch, scope, measured_at);

CREATE TABLE calibration_tables (
	id VARCHAR(200) NOT NULL, 
	document JSON NOT NULL, 
	content_sha256 VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	created_by VARCHAR(200), 
	parent_id VARCHAR(200), 
	kind VARCHAR(16) NOT NULL, 
	CONSTRAINT pk_calibration_tables PRIMARY KEY (id), 
	CONSTRAINT ck_calibration_tables_kind CHECK (kind IN ('builtin', 'draft', 'fitted'))
);

CREATE TABLE activations (
	seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, 
	hypervisor VARCHAR(16) NOT NULL, 
	arch VARCHAR(64) NOT NULL, 
	table_id VARCHAR(200), 
	previous_table_id VARCHAR(200), 
	actor VARCHAR(200) NOT NULL, 
	reason TEXT, 
	forced BOOLEAN NOT NULL, 
	action VARCHAR(16) NOT NULL, 
	at DATETIME NOT NULL, 
	CONSTRAINT ck_activations_action CHECK (action IN ('activate', 'rollback')), 
	CONSTRAINT ck_activations_activate_names_table CHECK (action = 'rollback' OR table_id IS NOT NULL)
);

CREATE INDEX ix_activations_hypervisor_arch_seq ON activations (hypervisor, arch, seq);
