"""An independent DICOMweb client (PyPI dicomweb-client) against the hub.

Run by cloud-sync/tests/dicomweb.rs: python dicomweb_check.py URL TOKEN OTHER_TOKEN DX NATIVE_DX
Stores the van's DX object (JPEG-LS) and a CR made here, searches for them by study and by
patient, retrieves them and their metadata, compares the pixels, and checks that another
organisation's token sees nothing. Prints one JSON object with what it found.
"""

import json
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError

url, token, other_token, dx_path, native_path = sys.argv[1:6]
out = {}


def client(tok):
    return DICOMwebClient(url=url, headers={"Authorization": f"Bearer {tok}"})


def make_cr():
    """A computed radiography object, as a PACS would send one."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Prior^Pat"
    ds.PatientID = "MRN-PRIOR-1"
    ds.StudyDate = "20240101"
    ds.Modality = "CR"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = 64, 80
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(64 * 80, dtype=np.uint16) % 4096).reshape(64, 80).tobytes()
    return ds


c = client(token)
dx = pydicom.dcmread(dx_path)
native = pydicom.dcmread(native_path)
cr = make_cr()
stored = c.store_instances([dx, cr])
out["stored"] = len(stored.get("ReferencedSOPSequence", []))
out["failed"] = len(stored.get("FailedSOPSequence", []) if "FailedSOPSequence" in stored else [])

by_study = c.search_for_studies(search_filters={"StudyInstanceUID": dx.StudyInstanceUID})
out["by_study"] = len(by_study)
by_patient = c.search_for_studies(search_filters={"PatientID": str(dx.PatientID)})
out["by_patient"] = len(by_patient)
by_name = c.search_for_studies(search_filters={"PatientName": "prior*"})
out["by_name"] = [Dataset.from_json(s).PatientID for s in by_name]
out["all_studies"] = len(c.search_for_studies())
series = c.search_for_series(dx.StudyInstanceUID)
out["series_modality"] = [Dataset.from_json(s).Modality for s in series]
instances = c.search_for_instances(dx.StudyInstanceUID)
out["instances"] = len(instances)

retrieved = c.retrieve_study(dx.StudyInstanceUID)
out["retrieved"] = len(retrieved)
got = retrieved[0]
out["retrieved_transfer_syntax"] = str(got.file_meta.TransferSyntaxUID)
out["dx_pixels_equal"] = bool(np.array_equal(got.pixel_array, native.pixel_array))
out["dx_shape"] = list(got.pixel_array.shape)
out["dx_patient"] = str(got.PatientName)

got_cr = c.retrieve_instance(cr.StudyInstanceUID, cr.SeriesInstanceUID, cr.SOPInstanceUID)
out["cr_pixels_equal"] = bool(np.array_equal(got_cr.pixel_array, cr.pixel_array))

as_stored = c.retrieve_instance(
    dx.StudyInstanceUID, dx.SeriesInstanceUID, dx.SOPInstanceUID, media_types=(("application/dicom", "*"),)
)
out["as_stored_transfer_syntax"] = str(as_stored.file_meta.TransferSyntaxUID)

meta = c.retrieve_study_metadata(dx.StudyInstanceUID)
m = Dataset.from_json(meta[0], bulk_data_uri_handler=lambda tag, vr, uri: None)
out["metadata_patient_id"] = str(m.PatientID)
out["metadata_kvp"] = float(m.KVP)
uri = meta[0]["7FE00010"]["BulkDataURI"]
bulk = c.retrieve_bulkdata(uri)
out["bulk_equal"] = bulk[0] == native.PixelData

other = client(other_token)
out["other_org_studies"] = len(other.search_for_studies())
try:
    other.retrieve_study(dx.StudyInstanceUID)
    out["other_org_retrieve"] = "allowed"
except HTTPError as e:
    out["other_org_retrieve"] = e.response.status_code

print(json.dumps(out))
